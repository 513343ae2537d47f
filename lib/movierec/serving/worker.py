"""The model in its own process, so that it never waits for the event loop's GIL.

In one process the model thread needs the GIL back after every ONNX Runtime call while the
HTTP event loop holds it most of the time under load: on the 2-core build machine a batch
took about 20% longer inside the server than alone (``bench/serve.py``). Here a child
process owns the ONNX Runtime session and ranks each batch; the server sends a batch as one
binary message over a pipe and gets each row's top k back. There is one pipe per batch in
flight (:data:`SLOTS`), so the next batch is already waiting when one finishes.

The wire format is flat little-endian int64 (and float64 for scores), not pickle: a batch
of 16 ml-100k histories is about 15 KB and costs microseconds to encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from movierec.export.runtime import Device
from movierec.serving.catalog import BundleError
from movierec.serving.ranking import Ranked

# Batches in flight at once: the micro-batcher hands over one running and one waiting.
SLOTS = 2
# Socket buffer asked for each pipe (the kernel may cap it at net.core.wmem_max).
PIPE_BUFFER_BYTES = 1 << 20
# How long a child may take to load and warm up a model before the load counts as failed.
READY_TIMEOUT_S = 300.0
EXIT_CODE_WAIT_S = 2.0  # for the exit code of a child that closed its pipe
# How long one batch may take before the child counts as hung: it is then killed, so the
# service reports itself unhealthy (and its supervisor restarts it) instead of every
# request waiting forever. A batch takes milliseconds; this is far beyond any real one.
BATCH_TIMEOUT_S = 60.0
# How often a caller on the event loop looks for a pipe that a thread caller holds.
PIPE_POLL_S = 0.0005
# Exclusion codes in the batch message: no exclusion, or the row's own history.
NO_EXCLUDE, EXCLUDE_HISTORY = -1, -2
_OK, _FAILED = b"\x00", b"\x01"


class ModelProcessError(RuntimeError):
    """The model process is gone (killed, out of memory) or failed a batch.

    Attributes:
        gone: True when the process has exited, so nothing is scored until a restart or a
            reload; False when it failed one batch and still serves the next.
    """

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


def encode_batch(users: np.ndarray, histories: Sequence[np.ndarray], ks: Sequence[int],
                 excludes: Sequence[np.ndarray | None],
                 ties: Sequence[int] | None = None) -> bytes:
    """One int64 message: a header of ``n`` and five ``n``-long blocks, then the arrays.

    The blocks are ``users, ks, history lengths, exclusion codes, ties``, and the arrays
    the histories, then the explicit exclusions. An exclusion code is :data:`NO_EXCLUDE`,
    :data:`EXCLUDE_HISTORY` (the row's history itself, sent once) or the length of an
    explicit exclusion array; ``ties`` (None: 0) is each history's tied newest items
    (``OnnxModel.scores``).
    """
    codes = [NO_EXCLUDE if seen is None else EXCLUDE_HISTORY if seen is history else seen.size
             for history, seen in zip(histories, excludes, strict=True)]
    header = np.array([len(histories), *np.asarray(users).tolist(), *ks,
                       *(h.size for h in histories), *codes,
                       *(ties if ties is not None else [0] * len(histories))], dtype="<i8")
    extra = [seen for seen, code in zip(excludes, codes, strict=True) if code >= 0]
    return np.concatenate([header, *histories, *extra], dtype="<i8").tobytes()  # type: ignore[misc]


def decode_batch(message: bytes) -> tuple[np.ndarray, list[np.ndarray], list[int],
                                          list[np.ndarray | None], list[int]]:
    """The inverse of :func:`encode_batch` (arrays are read-only views of ``message``)."""
    data = np.frombuffer(message, dtype="<i8")
    n = int(data[0])
    users, ks, lengths, codes, ties = (data[1 + i * n:1 + (i + 1) * n] for i in range(5))
    position = 1 + 5 * n
    histories = []
    for length in lengths.tolist():
        histories.append(data[position:position + length])
        position += length
    excludes: list[np.ndarray | None] = []
    for history, code in zip(histories, codes.tolist(), strict=True):
        if code == NO_EXCLUDE:
            excludes.append(None)
        elif code == EXCLUDE_HISTORY:
            excludes.append(history)
        else:
            excludes.append(data[position:position + code])
            position += code
    return users, histories, ks.tolist(), excludes, ties.tolist()


def encode_ranked(ranked: Sequence[Ranked]) -> bytes:
    """``[n, counts, items]`` as int64, then every score as float64."""
    counts = [items.size for items, _ in ranked]
    ints = np.concatenate([[len(ranked)], counts, *(items for items, _ in ranked)], dtype="<i8")
    floats = np.concatenate([np.zeros(0), *(scores for _, scores in ranked)], dtype="<f8")
    return ints.tobytes() + floats.tobytes()


def decode_ranked(message: bytes) -> list[Ranked]:
    """The inverse of :func:`encode_ranked` (fresh arrays, safe to keep)."""
    n = int(np.frombuffer(message, dtype="<i8", count=1)[0])
    counts = np.frombuffer(message, dtype="<i8", count=n, offset=8)
    total = int(counts.sum())
    items = np.frombuffer(message, dtype="<i8", count=total, offset=8 * (1 + n)).astype(np.int64)
    scores = np.frombuffer(message, dtype="<f8", count=total, offset=8 * (1 + n + total))
    scores = scores.astype(np.float64)
    bounds = np.cumsum(counts)[:-1]
    return list(zip(np.split(items, bounds), np.split(scores, bounds), strict=True))


def _serve(path: str, max_len: int, n_items: int, threads: int | None, device: Device,
           tie_orders: int, warm_item: int, conns: list[Connection]) -> None:
    """The child process: load, warm up, then rank batches until every pipe is closed."""
    from movierec.serving.engine import OnnxModel  # noqa: PLC0415 - engine imports us

    # Ctrl-C reaches the whole process group; the server shuts the child down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model = OnnxModel(Path(path), max_len, n_items, threads, device, tie_orders=tie_orders)
        model.warm_up(warm_item)
    except Exception as exc:  # reported to the parent, which raises it as a BundleError
        conns[0].send_bytes(_FAILED + str(exc).encode())
        return
    conns[0].send_bytes(_OK + json.dumps(model.providers).encode())
    live = list(conns)
    while live:  # the parent closing its ends (or dying) ends the loop
        for conn in wait(live):
            assert isinstance(conn, Connection)
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                live.remove(conn)
                continue
            try:
                reply = _OK + encode_ranked(model.rank(*decode_batch(message)))
            except Exception as exc:  # one bad batch must not take the model down
                reply = _FAILED + f"{type(exc).__name__}: {exc}".encode()
            conn.send_bytes(reply)


def _widen(sock: socket.socket) -> None:
    """Ask for 1 MiB socket buffers, so a large batch is written without waiting.

    A batch of long histories (hundreds of KB) would otherwise make ``send_bytes`` wait,
    on the event loop, until the child reads.
    """
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, PIPE_BUFFER_BYTES)


def _child_environment() -> dict[str, str]:
    """Our environment, with the folder holding this ``movierec`` first on the path.

    So the child runs the same code as the server even where the package is not installed
    (a notebook that put ``lib`` on ``sys.path``).
    """
    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


class ModelProcess:
    """An :class:`~movierec.serving.engine.OnnxModel` in a child process, same ``rank``.

    Thread-safe: up to :data:`SLOTS` batches are in flight at once (callers beyond that
    wait for a free pipe). Call :meth:`close` when done; the child also exits by itself
    when this process dies, since its pipes then close.
    """

    def __init__(self, path: Path, max_len: int, n_items: int, threads: int | None = None,
                 device: Device = "cpu", *, tie_orders: int = 1, warm_item: int = 0) -> None:
        """Start the child and wait until it has loaded and warmed up the model.

        Raises:
            BundleError: The child could not load the model, or did not answer in time.
        """
        # A fresh interpreter (``python -m movierec.serving.worker``), not multiprocessing:
        # no fork of a threaded server, and unlike "spawn" it never re-runs the caller's
        # main script, which need not be guarded by ``if __name__ == "__main__"``.
        pairs = [socket.socketpair() for _ in range(SLOTS)]
        for ours, _ in pairs:
            _widen(ours)
        fds = [theirs.fileno() for _, theirs in pairs]
        spec = {"path": str(path), "max_len": max_len, "n_items": n_items, "threads": threads,
                "device": device, "tie_orders": tie_orders, "warm_item": warm_item,
                "fds": fds}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "movierec.serving.worker", json.dumps(spec)], pass_fds=fds,
            env=_child_environment())
        for _, theirs in pairs:
            theirs.close()
        self._conns = [Connection(ours.detach()) for ours, _ in pairs]
        self._free: queue.Queue[Connection] = queue.Queue()
        self._slots: asyncio.Semaphore | None = None
        reply = b""
        if self._conns[0].poll(READY_TIMEOUT_S):
            try:
                reply = self._conns[0].recv_bytes()
            except EOFError:
                reply = b""
        if reply[:1] != _OK:
            # No reply: the pipe closed because the child exited (or it never answered).
            # An exited child may not be reaped yet; a moment's wait gets its exit code.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=EXIT_CODE_WAIT_S if not reply else 0)
            code = self._process.poll()
            self.close()
            why = (reply[1:].decode() if reply else
                   f"the model process did not become ready in {READY_TIMEOUT_S:.0f} s"
                   if code is None else
                   f"the model process exited with code {code} while loading (its error "
                   "is in the output above)")
            raise BundleError(f"{path}: {why}")
        self.providers: list[str] = json.loads(reply[1:])
        for conn in self._conns:
            self._free.put(conn)

    def _gone(self) -> ModelProcessError:
        """The error for a call whose pipe broke: the child has exited (or is exiting)."""
        return ModelProcessError(f"the model process is gone (exit code "
                                 f"{self._process.poll()})", gone=True)

    def _hung(self) -> ModelProcessError:
        """Kill a child that did not answer a batch in time; the error says so."""
        self._process.kill()
        return ModelProcessError(f"the model process did not answer a batch within "
                                 f"{BATCH_TIMEOUT_S:g} s and was stopped", gone=True)

    @property
    def alive(self) -> bool:
        """Whether the child process still runs."""
        return self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    def rank(self, users: np.ndarray, histories: Sequence[np.ndarray], ks: Sequence[int],
             excludes: Sequence[np.ndarray | None],
             ties: Sequence[int] | None = None) -> list[Ranked]:
        """Each row's top ``ks[row]`` items, as ``OnnxModel.rank`` computes them.

        Raises:
            ModelProcessError: The child is gone or failed this batch.
        """
        message = encode_batch(users, histories, ks, excludes, ties)
        conn = self._free.get()
        try:
            conn.send_bytes(message)
            if not conn.poll(BATCH_TIMEOUT_S):  # waits without the GIL
                raise self._hung()
            reply = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise self._gone() from exc
        finally:
            self._free.put(conn)
        if reply[:1] != _OK:
            raise ModelProcessError(f"the model process failed a batch: {reply[1:].decode()}",
                                    gone=False)
        return decode_ranked(reply[1:])

    async def rank_async(self, users: np.ndarray, histories: Sequence[np.ndarray],
                         ks: Sequence[int], excludes: Sequence[np.ndarray | None],
                         ties: Sequence[int] | None = None) -> list[Ranked]:
        """:meth:`rank` from the event loop, which itself waits for the reply.

        No thread between the loop and the child: the reply wakes the loop directly, one
        hand-off less per batch than a thread blocked in ``recv``.

        Raises:
            ModelProcessError: The child is gone or failed this batch.
        """
        loop = asyncio.get_running_loop()
        if self._slots is None:  # made here, inside the serving loop
            self._slots = asyncio.Semaphore(SLOTS)
        message = encode_batch(users, histories, ks, excludes, ties)
        async with self._slots:  # first come, first served among event-loop callers
            while True:  # a thread (a :meth:`rank` caller) may hold a pipe for a moment
                try:
                    conn = self._free.get_nowait()
                    break
                except queue.Empty:
                    # Polled, not handed to a thread: a caller cancelled while waiting
                    # must not leave a thread that takes a pipe and never gives it back.
                    await asyncio.sleep(PIPE_POLL_S)
            replied: asyncio.Future[bytes | BaseException] = loop.create_future()

            def on_readable() -> None:
                loop.remove_reader(conn.fileno())
                reply: bytes | BaseException
                try:
                    reply = conn.recv_bytes()
                except (EOFError, OSError) as exc:
                    reply = exc
                # The pipe is clear again only now: a caller cancelled meanwhile must not
                # leave its reply for the next batch to read.
                self._free.put(conn)
                if not replied.done():
                    replied.set_result(reply)

            try:
                conn.send_bytes(message)
            except OSError as exc:
                self._free.put(conn)
                raise self._gone() from exc
            loop.add_reader(conn.fileno(), on_readable)
            try:
                reply = await asyncio.wait_for(replied, BATCH_TIMEOUT_S)
            except TimeoutError:
                loop.remove_reader(conn.fileno())
                raise self._hung() from None
        if isinstance(reply, BaseException):
            raise self._gone() from reply
        if reply[:1] != _OK:
            raise ModelProcessError(f"the model process failed a batch: {reply[1:].decode()}",
                                    gone=False)
        return decode_ranked(reply[1:])

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipes (the child then exits) and wait for the child."""
        for conn in self._conns:
            conn.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout)


def main(spec_json: str) -> None:
    """Entry point of the child: ``python -m movierec.serving.worker SPEC_JSON``."""
    spec = json.loads(spec_json)
    _serve(spec["path"], spec["max_len"], spec["n_items"], spec["threads"], spec["device"],
           spec["tie_orders"], spec["warm_item"], [Connection(fd) for fd in spec["fds"]])


if __name__ == "__main__":
    main(sys.argv[1])
