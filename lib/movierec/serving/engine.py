"""ONNX Runtime inference: the model of a bundle, and bundle loading with warm-up.

The model runs in this process (:class:`OnnxModel`) or in a child process
(:mod:`movierec.serving.worker`); :mod:`movierec.serving.batcher` hands it batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from movierec.serving.catalog import (
    MODEL_FILES,
    BundleError,
    Catalog,
    Precision,
    load_catalog,
    verify_bundle_files,
)
from movierec.serving.history import DemoUser, pick_demo_users
from movierec.serving.ranking import Ranked, Ranker, top_k, top_k_rows
from movierec.serving.worker import ModelProcess

__all__ = ["LoadedBundle", "OnnxModel", "Ranked", "Ranker", "load_bundle", "top_k", "top_k_rows"]
# A length group of a batch takes sequences down to this fraction of its longest one
# (measured on ml-100k, max_len 200, batches of 8-32: 0.7 beat 0.3, 0.5 and 0.85).
GROUP_RATIO = 0.7


class OnnxModel:
    """One ONNX Runtime session with the bundle interface (users, seqs) -> scores.

    A graph with a dynamic ``seqs`` length (current exports) gets each batch left padded
    only to its longest sequence, which costs a fraction of ``max_len`` for most users
    (attention is quadratic in the length); an older fixed-width graph gets ``max_len``.
    ``tie_orders`` is the bundle's (``registry.layout.bundle_tie_orders``): a history whose
    newest items share one timestamp is scored as the mean over up to that many of their
    orders, as the model was evaluated.
    """

    def __init__(self, path: Path, max_len: int, n_items: int, threads: int | None = None,
                 device: Device = "cpu", *, tie_orders: int = 1) -> None:
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
        # In the model's precision: top_k_rows partitions float32 twice as fast as float64.
        return mean_over_owners(scores, owner, len(histories)).astype(scores.dtype)

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
    tie_orders: int = 1  # the model scores tied newest items over this many orders
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
    demo_users = pick_demo_users(catalog)  # before the model: a failure here leaves no child
    warm_item = int(catalog.popularity_order[0]) if catalog.popularity_order.size else 0
    args = (path / MODEL_FILES[precision], int(meta["max_len"]), int(meta["n_items"]),
            threads, device)
    tie_orders = bundle_tie_orders(meta)
    model: Ranker
    if isolate:  # loads and warms up in the child
        model = ModelProcess(*args, tie_orders=tie_orders, warm_item=warm_item)
    else:
        model = in_process = OnnxModel(*args, tie_orders=tie_orders)
        in_process.warm_up(warm_item)
    reported = version or str(meta.get("version") or meta.get("run_id") or "unversioned")
    return LoadedBundle(path=Path(path), meta=meta, precision=precision, version=reported,
                        alias=alias or "", catalog=catalog, model=model,
                        demo_users=demo_users, tie_orders=tie_orders)
