"""ONNX Runtime sessions tuned for CPU (and CUDA when present).

Torch-free, shared by the exporter's parity checks and the recommendation service.
"""

from __future__ import annotations

import logging
from typing import Literal

import onnxruntime as ort

log = logging.getLogger("movierec.serving")
Device = Literal["cpu", "cuda"]
# ONNX metadata_props key holding max_len (the longest sequence a dynamic graph accepts).
MAX_LEN_KEY = "movierec.max_len"


class SeqsAxisError(ValueError):
    """The model's ``seqs`` input says neither a fixed length nor a recorded max_len."""


def onnx_max_len(session: ort.InferenceSession) -> tuple[int, bool]:
    """(max_len, dynamic) of a scorer: the fixed ``seqs`` width, or the recorded max_len.

    A dynamic graph (exported by this movierec) accepts any length up to max_len, so a
    batch needs padding only to its longest sequence; an older fixed-width graph needs
    exactly its width.

    Raises:
        SeqsAxisError: No ``seqs`` input of rank 2, or a dynamic one without a max_len.
    """
    shapes = {i.name: i.shape for i in session.get_inputs()}
    shape = shapes.get("seqs")
    if shape is None or len(shape) != 2:
        raise SeqsAxisError(f"the model needs a rank-2 input 'seqs'; it has {shapes}")
    if isinstance(shape[1], int):
        return shape[1], False
    recorded = session.get_modelmeta().custom_metadata_map.get(MAX_LEN_KEY, "")
    if not recorded.isdigit() or int(recorded) < 1:
        raise SeqsAxisError(f"the seqs input has a dynamic length but the model records no "
                            f"{MAX_LEN_KEY}: re-export it with the current movierec")
    return int(recorded), True


def select_providers(device: Device) -> list[str]:
    """CUDA (with CPU behind it) when asked for and available, otherwise CPU."""
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("device 'cuda' asked for but onnxruntime has no CUDA provider; using CPU")
    return ["CPUExecutionProvider"]


def session_options(threads: int | None) -> ort.SessionOptions:
    """CPU-tuned session options.

    Full graph optimisation, ``threads`` intra-op threads (0 = ORT's default, one per
    physical core), sequential execution (one model, one stream).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


