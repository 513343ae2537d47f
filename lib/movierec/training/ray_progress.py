"""Epoch records from Ray Train's workers to the driver: live tracking and a progress bar.

Workers report each epoch with ``ray.train.report``; Ray Train's controller (an actor) sees
those reports, the driver does not. ``EpochRelay`` is a controller callback that puts rank
0's record on a Ray queue, and ``relayed_epochs`` drains that queue on a thread of the
driver, where the listeners run. Imports Ray at module level: import it only when
training on Ray.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.train import UserCallback
from ray.util.queue import Empty, Queue
from tqdm.auto import tqdm

from movierec.training.config import TrainConfig
from movierec.training.hooks import EpochListener
from movierec.training.loop import progress_fields
from movierec.training.soup import refit_loss_branch, soup_plan

POLL_SECONDS = 0.2
PUT_TIMEOUT_S = 30.0


class EpochRelay(UserCallback):
    """Runs in Ray Train's controller: forwards rank 0's epoch records to the driver."""

    def __init__(self, records: Queue) -> None:
        self.records = records
        self._broken = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        """Queue rank 0's record of a finished epoch (the final report has no epoch)."""
        del run_context, checkpoint
        if self._broken or not metrics or "epoch" not in metrics[0]:
            return
        try:
            # Waited for: the record is queued before the next report, so every record is
            # there by the time ``trainer.fit`` returns. Bounded: the queue is unbounded,
            # so Queue.put's own timeout would never apply to a queue actor that hangs.
            ray.get(self.records.actor.put_nowait.remote(dict(metrics[0])),
                    timeout=PUT_TIMEOUT_S)
        except Exception as error:  # a lost queue costs the live view, never the run
            self._broken = True
            warnings.warn(f"epoch records no longer reach the driver ({error}); training "
                          "goes on and its result still comes back", RuntimeWarning,
                          stacklevel=1)


@contextmanager
def relayed_epochs(*listeners: EpochListener) -> Iterator[EpochRelay]:
    """Yield the callback for ``RunConfig(callbacks=...)``; its records reach ``listeners``.

    On exit the driver's thread hands on the records still queued, then the queue's actor
    is shut down. A listener that raises is reported once as a warning and left out after
    that: progress and tracking never stop a training run.
    """
    records: Queue = Queue(actor_options={"num_cpus": 0})  # keeps the CPUs for workers
    done = threading.Event()
    active = list(listeners)

    def drain() -> None:
        while True:
            try:
                record = records.get(timeout=POLL_SECONDS)
            except Empty:
                if done.is_set():
                    return
                continue
            for listener in list(active):
                try:
                    listener(record)
                except Exception as error:  # any: see the docstring
                    active.remove(listener)
                    warnings.warn(f"epoch listener {listener!r} failed ({error}); it gets "
                                  "no more records", RuntimeWarning, stacklevel=1)

    thread = threading.Thread(target=drain, name="ray-epoch-records", daemon=True)
    thread.start()
    try:
        yield EpochRelay(records)
    finally:
        done.set()
        thread.join()
        records.shutdown()


class DriverProgress:
    """The driver's progress bar of a Ray Train run, fed epoch records.

    Selection epochs show the loss and the last and best validation NDCG@10; the refit,
    which does not validate, gets a bar of its own with its soup branch.
    """

    def __init__(self, config: TrainConfig, workers: int, enabled: bool = True) -> None:
        self._config, self._enabled = config, enabled
        self._describe = f"{config.model.kind} on {workers} Ray worker{'s' * (workers > 1)}"
        self._best: tuple[float, int] | None = None  # the selected score and epoch so far
        self._last: float | None = None  # the last validation score
        self._branches = 1
        self._refit = False
        self._bar = tqdm(total=config.epochs, desc=f"train {self._describe}", unit="epoch",
                         disable=not enabled)

    def __call__(self, record: dict[str, Any]) -> None:
        """Advance by one epoch."""
        refit_losses = {refit_loss_branch(key): key for key in record}
        refit_losses.pop(None, None)
        if refit_losses and not self._refit:  # the first refit epoch: selection is over
            self._start_refit()
        branch, key = next(iter(refit_losses.items()), (0, "loss"))
        if not refit_losses:
            score = record.get("epoch_valid_ndcg_10")
            if score is not None:
                self._last = float(score)
                if self._best is None or score > self._best[0]:  # as the loop selects
                    self._best = (float(score), int(record["epoch"]))
        self._bar.update()
        self._bar.set_postfix(loss=f"{record[key]:.4f}", **progress_fields(
            self._refit, self._last, self._best, branch, self._branches))

    def _start_refit(self) -> None:
        """Close selection's bar and open the refit's, as long as the selected epochs."""
        self._bar.close()
        self._refit = True
        selected = self._best[1] if self._best else 0
        fork, self._branches = soup_plan(self._config, selected)
        total = fork + self._branches * (selected - fork) if selected else None
        self._bar = tqdm(total=total, desc=f"refit {self._describe}", unit="epoch",
                         disable=not self._enabled)

    def close(self) -> None:
        """Close the bar (the refit's, or selection's when there was no refit)."""
        self._bar.close()
