"""The asyncio micro-batcher: concurrent requests share one model call.

While the model is busy, requests wait at most ``max_queue_delay_ms`` (from their
arrival) for company; up to ``max_batch_size`` of them go to the model together (ONNX
Runtime in a worker thread, or in a child process through one:
:mod:`movierec.serving.worker`), which scores and ranks every row, and each request gets
its own top k back. Each queued request carries the model it was admitted with, so a
bundle swap never mixes models inside one batch and never fails a request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from movierec.serving.metrics import ServingMetrics
from movierec.serving.ranking import Ranked, Ranker
from movierec.serving.worker import SLOTS, ModelProcess

log = logging.getLogger("movierec.serving")
__all__ = ["MicroBatcher", "OverloadedError", "ShuttingDownError"]
# Batches handed to the model at once: one running, the next formed and waiting (the
# model process has one pipe for each).
PIPELINE_DEPTH = SLOTS
# While a batch runs, the next one waits for company in steps this long, re-checking
# whether the model has become idle (then it goes at once).
IDLE_POLL_S = 0.00025
DRAIN_S = 10.0  # how long stop() lets the batches already with the model finish


class ShuttingDownError(RuntimeError):
    """A queued request that the stopping server will not score (answered with a 503)."""


class OverloadedError(RuntimeError):
    """The queue is full: the request is refused at once (a 503) rather than left to wait."""


@dataclass
class _Job:
    model: Ranker
    user: int
    seq: np.ndarray
    future: asyncio.Future[Ranked]
    enqueued: float
    k: int  # ranked by the model (thread or process), with the rest of the batch
    exclude: np.ndarray | None
    ties: int  # how many of the history's newest items share one timestamp (0: unknown)


class MicroBatcher:
    """Groups concurrent requests into one ONNX Runtime call.

    ``max_batch_size=1`` disables batching (each request runs alone, without the queue).
    Until :meth:`start` runs (or after :meth:`stop`), requests run alone as well.

    Batches are pipelined: while one runs in ONNX Runtime, the next one is formed (and
    may wait for company) and handed over, so the model does not sit idle while
    the event loop collects requests.
    """

    def __init__(self, max_batch_size: int = 32, max_queue_delay_ms: float = 2.0,
                 metrics: ServingMetrics | None = None, max_queued: int = 4096) -> None:
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.max_delay = max_queue_delay_ms / 1000.0
        self.metrics = metrics
        self._executor: ThreadPoolExecutor | None = None  # the model thread, while running
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._taken: list[_Job] = []  # jobs out of the queue, not yet handed over
        self._slots: asyncio.Semaphore | None = None  # batches in flight: running + next
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending: dict[Ranker, int] = {}  # requests not yet answered, by model
        self._alone = 0  # requests running without the queue (batching off), admitted

    @property
    def running(self) -> bool:
        """Whether the batching loop runs."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self.max_batch_size > 1 and not self.running:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
            self._queue = asyncio.Queue(maxsize=self.max_queued)
            self._slots = asyncio.Semaphore(PIPELINE_DEPTH)
            self._task = asyncio.create_task(self._loop(), name="movierec-batcher")

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop the loop: queued requests fail with :class:`ShuttingDownError`.

        Batches already with the model finish first (for up to ``drain_s`` seconds), so the
        model can be closed once this returns without stranding their requests.
        """
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
                job.future.set_exception(ShuttingDownError(
                    "the server is shutting down; send the request again (to another "
                    "replica, or to this one once it is back)"))
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=drain_s)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def top_k(self, model: Ranker, user: int, seq: np.ndarray, k: int,
                    exclude: np.ndarray | None, ties: int = 0) -> Ranked:
        """:func:`top_k` of one request's scores, ranked with its batch.

        The ranking runs with the model, vectorised over the batch, which spares the
        event loop (which every request needs) one ranking per request. ``ties``: how
        many of ``seq``'s newest items share one timestamp (0 or 1: score it as it is).
        """
        loop = asyncio.get_running_loop()
        job = _Job(model, user, seq, loop.create_future(), loop.time(), k, exclude, ties)
        self._pending[model] = self._pending.get(model, 0) + 1
        try:
            if not self.running or self._queue is None:
                # Without the queue the same bound holds: requests waiting for the model
                # (its process's slots, or the thread pool) would otherwise pile up.
                if self._alone >= self.max_queued:
                    raise self._overloaded()
                self._alone += 1
                try:
                    return (await self._rank(model, [job], None))[0]
                finally:
                    self._alone -= 1
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:  # overloaded: shed the request now, not after a wait
                raise self._overloaded() from None
            return await job.future
        finally:
            left = self._pending.pop(model) - 1
            if left:
                self._pending[model] = left

    def _overloaded(self) -> OverloadedError:
        """The error a request gets when the bound is reached (built only then)."""
        return OverloadedError(f"the service is overloaded ({self.max_queued} requests "
                               "queued); retry shortly")

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
            deadline = first.enqueued + self.max_delay  # its wait counts from its arrival
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
