"""One training epoch under DDP (two gloo processes): what every worker logs and draws."""

from __future__ import annotations

import os
import queue
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from movierec.serving.loadtest import free_port


class _Batches:
    """Four batches; worker r takes batches r and r + 2 (loss = batch index + 10 * rank)."""

    seed = 7

    def __len__(self) -> int:
        return 4

    def epoch(self, epoch: int) -> Any:
        for index in range(4):
            yield {"x": torch.tensor([float(index)])}


class _Objective(nn.Module):
    def __init__(self, nan_rank: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.nan_rank, self.draws = nan_rank, []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rank = dist.get_rank()
        self.draws.append(torch.rand(1).item())  # stands for a dropout mask
        value = batch["x"] + 10 * rank
        if rank == self.nan_rank:
            value = value * float("nan")
        return (self.weight * 0 + value).sum()


def _worker(rank: int, port: int, nan_rank: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from movierec.training import loop

    objective = _Objective(nan_rank)
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.0)
    hooks = SimpleNamespace(rank=rank, world_size=2)
    config = SimpleNamespace(batch_size=1, precision="fp32", lr=0.0)
    try:
        record = loop._train_epoch(objective, optimizer, _Batches(), 1, hooks,
                                   torch.device("cpu"), config)
        results.put((rank, record["loss"], objective.draws))
    except FloatingPointError:
        results.put((rank, "diverged", objective.draws))
    finally:
        dist.destroy_process_group()


def _epoch_on_two_workers(nan_rank: int = -1) -> list[tuple[int, Any, list[float]]]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=_worker, args=(rank, port, nan_rank, results))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    try:
        return sorted(results.get(timeout=120) for _ in workers)
    except queue.Empty as error:
        raise AssertionError("a DDP worker did not answer within 120 s") from error
    finally:
        for worker in workers:
            worker.join(30)


def test_every_worker_logs_the_epoch_loss_of_all_workers_and_draws_its_own_masks() -> None:
    first = _epoch_on_two_workers()
    # Rank 0 trained batches 0 and 2, rank 1 batches 1 and 3 (+10): (0+2+11+13) / 4.
    assert [loss for _, loss, _ in first] == [6.5, 6.5]
    (_, _, draws_0), (_, _, draws_1) = first
    assert draws_0 != draws_1  # not the same dropout masks on every worker
    again = _epoch_on_two_workers()  # a resume replays the epoch: the same masks
    assert [draws for _, _, draws in again] == [draws_0, draws_1]


def test_a_loss_that_diverges_on_one_worker_stops_every_worker() -> None:
    assert [outcome for _, outcome, _ in _epoch_on_two_workers(nan_rank=1)] == [
        "diverged", "diverged"]
