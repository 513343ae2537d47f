"""ONNX Runtime sessions tuned for CPU (and CUDA when present).

Torch-free, shared by the exporter's parity checks and the recommendation service.
"""

from __future__ import annotations

import logging
from typing import Literal

import onnxruntime as ort

log = logging.getLogger("movierec.serving")
Device = Literal["cpu", "cuda"]


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


