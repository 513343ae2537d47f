"""Online serving: a FastAPI app over an ONNX Runtime model bundle (no torch, Ray or MLflow).

Entry points live in :mod:`movierec.serving.app` (``create_app``, ``ServeSettings``,
``run_server``); this package ``__init__`` stays empty so that importing it is cheap.
"""
