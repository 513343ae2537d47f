"""ONNX Runtime inference: bundle loading with warm-up, and an asyncio micro-batcher.

Requests wait at most ``max_queue_delay_ms`` for company, up to ``max_batch_size`` of them
go to the model together (ONNX Runtime in a worker thread, or in a child process through
one: :mod:`movierec.serving.worker`), which scores and ranks every row, and each request
gets its own top k back. Each queued request carries the model it
was admitted with, so a bundle swap never mixes models inside one batch and never fails a
request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from movierec.data.tie_orders import expand_orders, mean_over_owners
from movierec.export.runtime import (
    Device,
    SeqsAxisError,
    onnx_max_len,
    select_providers,
    session_options,
)
from movierec.registry.layout import bundle_tie_orders
from movierec.serving.catalog import MODEL_FILES, BundleError, Catalog, Precision, load_catalog
from movierec.serving.catalog import verify_bundle as verify_bundle_files
from movierec.serving.history import DemoUser, pick_demo_users
from movierec.serving.metrics import ServingMetrics
from movierec.serving.ranking import Ranked, top_k, top_k_rows
from movierec.serving.worker import ModelProcess

log = logging.getLogger("movierec.serving")
__all__ = ["LoadedBundle", "MicroBatcher", "OnnxModel", "Ranked", "Ranker", "load_bundle", "top_k",
           "top_k_rows"]
# Batches handed to the model at once: one running, the next formed and waiting (the
# model process has one pipe for each: worker.SLOTS).
# While a batch runs, the next one waits for company in steps this long, re-checking
# whether the model has become idle (then it goes at once).
IDLE_POLL_S = 0.00025
PIPELINE_DEPTH = 2
# A length group of a batch takes sequences down to this fraction of its longest one
# (measured on ml-100k, max_len 200, batches of 8-32: 0.7 beat 0.3, 0.5 and 0.85).
GROUP_RATIO = 0.7


class Ranker(Protocol):
    """What serving needs from a model: rank a batch; an in-process or a child-process one."""

    providers: list[str]

    @property
    def alive(self) -> bool:
        """Whether the model can still answer."""

    def rank(self, users: np.ndarray, histories: Sequence[np.ndarray], ks: Sequence[int],
             excludes: Sequence[np.ndarray | None],
             ties: Sequence[int] | None = None) -> list[Ranked]:
        """Each row's top ``ks[row]`` item indices (best first) and scores.

        ``ties`` (None: none) is how many of each history's newest items share one
        timestamp; the model scores such a history over their orders.
        """

    def close(self) -> None:
        """Release the model (a no-op in process)."""


class OnnxModel:
    """One ONNX Runtime session with the bundle interface (users, seqs) -> scores.

    A graph with a dynamic ``seqs`` length (current exports) gets each batch left padded
    only to its longest sequence, which costs a fraction of ``max_len`` for most users
    (attention is quadratic in the length); an older fixed-width graph gets ``max_len``.
    ``tie_orders`` is the bundle's (``registry.layout.bundle_tie_orders``): a history whose newest
    items share one timestamp is scored as the mean over up to that many of their orders,
    as the model was evaluated.
    """

    def __init__(self, path: Path, max_len: int, n_items: int, threads: int | None = None,
                 device: Device = "cpu", tie_orders: int = 1) -> None:
        self.max_len = max_len
        self.n_items = n_items
        self.tie_orders = tie_orders
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=select_providers(device))
        except Exception as exc:  # ORT raises its own untyped errors for bad models
            raise BundleError(f"{path}: ONNX Runtime cannot load the model ({exc})") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"users", "seqs"} or "scores" not in outputs:
            raise BundleError(f"{path}: model inputs {sorted(inputs)} / outputs {outputs}; "
                              "expected inputs users, seqs and output scores")
        try:
            width, self.dynamic = onnx_max_len(self.session)
        except SeqsAxisError as exc:
            raise BundleError(f"{path}: {exc}") from exc
        if width != max_len:
            raise BundleError(f"{path}: seqs input has length {width} but metadata "
                              f"max_len={max_len}")
        self.providers = self.session.get_providers()
        self._outputs = ["scores"]

    def pad(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Left-pad (with 0) and left-truncate sequences into one int64 matrix.

        Its width is ``max_len`` for a fixed-width graph, else the longest sequence's
        (at least 1, at most ``max_len``).
        """
        tails = [seq[-self.max_len:] for seq in sequences]
        width = self.max_len if not self.dynamic else max(1, max(t.size for t in tails))
        seqs = np.zeros((len(tails), width), dtype=np.int64)
        for row, tail in enumerate(tails):
            if tail.size:
                seqs[row, width - tail.size:] = tail
        return seqs

    def run(self, users: np.ndarray, sequences: list[np.ndarray]) -> np.ndarray:
        """Scores ``[B, n_items + 1]`` for user indices and item-index sequences.

        A dynamic-length graph runs a batch as a few length groups (longest first; a group
        takes sequences down to ``GROUP_RATIO`` of its longest), so short histories are not
        padded to the longest one in the batch: cost follows each row's own length at the
        price of a few more ONNX Runtime calls (each ~0.03 ms).
        """
        users = np.asarray(users, dtype=np.int64)
        if not self.dynamic or len(sequences) < 2:
            return self.session.run(self._outputs, {"users": users,
                                                    "seqs": self.pad(sequences)})[0]
        lengths = np.fromiter((seq.size for seq in sequences), dtype=np.int64,
                              count=len(sequences))
        order = np.argsort(-lengths, kind="stable")
        ranked = lengths[order]
        scores: np.ndarray | None = None
        start = 0
        while start < order.size:
            # The group ends at the first sequence shorter than GROUP_RATIO of its longest.
            floor = min(int(ranked[start]), self.max_len) * GROUP_RATIO
            end = start + int(np.searchsorted(-ranked[start:], -floor, side="right"))
            rows = order[start:max(end, start + 1)]
            part = self.session.run(self._outputs, {
                "users": users[rows], "seqs": self.pad([sequences[i] for i in rows])})[0]
            if scores is None:
                scores = np.empty((len(sequences), part.shape[1]), dtype=part.dtype)
            scores[rows] = part
            start = start + rows.size
        assert scores is not None
        return scores

    @property
    def alive(self) -> bool:
        """Always True: the session lives in this process."""
        return True

    def scores(self, users: np.ndarray, histories: Sequence[np.ndarray],
               ties: Sequence[int] | None = None) -> np.ndarray:
        """:meth:`run`, each history averaged over the orders of its ``ties`` newest items.

        The reordered copies go to ONNX Runtime with the batch (``data.tie_orders``).
        """
        if ties is None or self.tie_orders < 2:
            return self.run(users, list(histories))
        inputs, owner = expand_orders(histories, ties, self.tie_orders, self.max_len)
        scores = self.run(np.asarray(users)[owner], inputs)
        if len(owner) == len(histories):
            return scores
        return mean_over_owners(scores, owner, len(histories))

    def rank(self, users: np.ndarray, histories: Sequence[np.ndarray], ks: Sequence[int],
             excludes: Sequence[np.ndarray | None],
             ties: Sequence[int] | None = None) -> list[Ranked]:
        """:meth:`scores`, then each row's top ``ks[row]`` (see :func:`top_k_rows`)."""
        return top_k_rows(self.scores(users, histories, ties), ks, excludes)

    def close(self) -> None:
        """Nothing to release: the session goes with the object."""

    def warm_up(self, item: int) -> None:
        """Run inferences and check their shape and values (raises BundleError).

        Also runs a batch at ``max_len``, so the first long request does not pay for
        ONNX Runtime's allocations of the largest shapes.
        """
        scores = self.run(np.zeros(1, dtype=np.int64), [np.asarray([item], dtype=np.int64)])
        if scores.shape != (1, self.n_items + 1):
            raise BundleError(f"warm-up: scores shape {scores.shape}, expected "
                              f"(1, {self.n_items + 1}) from metadata n_items")
        if not np.isfinite(scores[0, 1:]).all():
            raise BundleError("warm-up: the model returned non-finite scores for real items")
        longest = self.run(np.zeros(1, dtype=np.int64),
                           [np.full(self.max_len, item, dtype=np.int64)])
        if not np.isfinite(longest[0, 1:]).all():
            raise BundleError(f"warm-up: non-finite scores for a sequence of {self.max_len}")


@dataclass(frozen=True)
class LoadedBundle:
    """A verified, warmed-up bundle: everything one request needs, swapped as one reference."""

    path: Path
    meta: dict[str, Any]
    precision: Precision
    version: str
    alias: str
    catalog: Catalog
    model: Ranker  # an OnnxModel unless loaded with ``isolate``
    demo_users: list[DemoUser]
    loaded_at: float = field(default_factory=time.time)


def load_bundle(path: Path, precision: Precision = "fp32", threads: int | None = None,
                device: Device = "cpu", version: str | None = None,
                alias: str | None = None, isolate: bool = False) -> LoadedBundle:
    """Verify, load and warm up a bundle (blocking: call it from a worker thread when live).

    Args:
        path: Bundle folder.
        precision: ``fp32`` (model.onnx) or ``int8`` (model.int8.onnx).
        threads: ONNX Runtime intra-op threads (None: one per physical core).
        device: ``cpu`` or ``cuda`` (falls back to CPU when CUDA is unavailable).
        version: The registry version to report (default: metadata ``version`` or run id).
        alias: The registry alias to report (default: "").
        isolate: Run the model in a child process (:class:`ModelProcess`, what the server
            does) instead of an :class:`OnnxModel` in this one.

    Raises:
        BundleError: When any check fails; nothing is half-loaded.
    """
    meta = verify_bundle_files(path, precision)
    catalog = load_catalog(path, meta)
    warm_item = int(catalog.popularity_order[0]) if catalog.popularity_order.size else 0
    args = (path / MODEL_FILES[precision], int(meta["max_len"]), int(meta["n_items"]),
            threads, device, bundle_tie_orders(meta))
    model: Ranker
    if isolate:
        model = ModelProcess(*args, warm_item=warm_item)  # loads and warms up in the child
    else:
        model = in_process = OnnxModel(*args)
        in_process.warm_up(warm_item)
    reported = version or str(meta.get("version") or meta.get("run_id") or "unversioned")
    return LoadedBundle(path=Path(path), meta=meta, precision=precision, version=reported,
                        alias=alias or "", catalog=catalog, model=model,
                        demo_users=pick_demo_users(catalog))


@dataclass
class _Job:
    model: Ranker
    user: int
    seq: np.ndarray
    future: asyncio.Future[Ranked]
    enqueued: float
    k: int  # ranked by the model (thread or process), with the rest of the batch
    exclude: np.ndarray | None
    ties: int  # the history's newest items that share one timestamp


class MicroBatcher:
    """Groups concurrent requests into one ONNX Runtime call.

    ``max_batch_size=1`` disables batching (each request runs alone, without the queue).
    Until :meth:`start` runs (or after :meth:`stop`), requests run alone as well.

    Batches are pipelined: while one runs in ONNX Runtime, the next one is formed (and
    may wait for company) and handed over, so the model does not sit idle while
    the event loop collects requests.
    """

    def __init__(self, max_batch_size: int = 32, max_queue_delay_ms: float = 2.0,
                 metrics: ServingMetrics | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._taken: list[_Job] = []  # jobs out of the queue, not yet handed over
        self._slots: asyncio.Semaphore | None = None  # batches in flight: running + next
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending: dict[Ranker, int] = {}  # requests not yet answered, by model

    @property
    def running(self) -> bool:
        """Whether the batching loop runs."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self.max_batch_size > 1 and not self.running:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(PIPELINE_DEPTH)
            self._task = asyncio.create_task(self._loop(), name="movierec-batcher")

    async def stop(self) -> None:
        """Stop the loop; queued requests fail with a clear error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = list(self._taken)
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=False)

    async def top_k(self, model: Ranker, user: int, seq: np.ndarray, k: int,
                    exclude: np.ndarray | None, ties: int = 0) -> Ranked:
        """:func:`top_k` of one request's scores, ranked with its batch.

        The ranking runs with the model, vectorised over the batch, which spares the
        event loop (which every request needs) one ranking per request. ``ties``: how
        many of ``seq``'s newest items share one timestamp (0: unknown).
        """
        return await self._submit(model, user, seq, k, exclude, ties)

    async def _submit(self, model: Ranker, user: int, seq: np.ndarray, k: int,
                      exclude: np.ndarray | None, ties: int) -> Ranked:
        loop = asyncio.get_running_loop()
        job = _Job(model, user, seq, loop.create_future(), loop.time(), k, exclude, ties)
        self._pending[model] = self._pending.get(model, 0) + 1
        try:
            if not self.running or self._queue is None:
                return (await self._rank(model, [job], None))[0]
            await self._queue.put(job)
            return await job.future
        finally:
            left = self._pending.pop(model) - 1
            if left:
                self._pending[model] = left

    async def drained(self, model: Ranker, poll_s: float = 0.05) -> None:
        """Wait until no request admitted with ``model`` is still waiting for an answer."""
        while model in self._pending:
            await asyncio.sleep(poll_s)

    async def _rank(self, model: Ranker, jobs: list[_Job],
                    executor: ThreadPoolExecutor | None) -> list[Ranked]:
        """Score and rank a batch (ranking is one vectorised pass over its rows).

        A model process is driven from the event loop itself (no thread between them); an
        in-process model runs in ``executor`` (None: the loop's default pool).
        """
        started = time.perf_counter()
        batch = (np.asarray([j.user for j in jobs], dtype=np.int64), [j.seq for j in jobs],
                 [j.k for j in jobs], [j.exclude for j in jobs], [j.ties for j in jobs])
        if isinstance(model, ModelProcess):
            ranked = await model.rank_async(*batch)
        else:
            ranked = await asyncio.get_running_loop().run_in_executor(executor, model.rank,
                                                                      *batch)
        if self.metrics is not None:
            self.metrics.inference_latency.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(jobs))
        return ranked

    async def _loop(self) -> None:
        assert self._queue is not None and self._slots is not None
        queue, slots = self._queue, self._slots
        loop = asyncio.get_running_loop()
        held: _Job | None = None
        while True:
            await slots.acquire()  # at most PIPELINE_DEPTH batches handed over at once
            first = held if held is not None else await queue.get()
            held = None
            batch = [first]
            self._taken = batch
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch_size:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if not self._in_flight:
                        break  # the model is idle: waiting for company would only add latency
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:  # short waits, so a batch that finishes ends the wait early
                        job = await asyncio.wait_for(queue.get(), min(remaining, IDLE_POLL_S))
                    except TimeoutError:
                        continue
                if job.model is not first.model:  # a swap happened: this job starts the next
                    held = job
                    self._taken = [*batch, job]
                    break
                batch.append(job)
            task = loop.create_task(self._execute(batch, loop))
            self._in_flight.add(task)
            task.add_done_callback(self._batch_done)
            self._taken = [held] if held is not None else []

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._slots is not None:
            self._slots.release()

    async def _execute(self, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        live = [job for job in batch if not job.future.done()]  # skip cancelled requests
        if not live:
            return
        now = loop.time()
        if self.metrics is not None:
            for job in live:
                self.metrics.queue_wait.observe(now - job.enqueued)
        try:
            results = await self._rank(live[0].model, live, self._executor)
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(live))
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, result in zip(live, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
