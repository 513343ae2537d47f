"""Export trained models to ONNX (fp32 and int8) and check them against PyTorch (``parity``).

``movierec.export.onnx`` needs torch; ``movierec.export.runtime`` (ONNX Runtime sessions)
does not, so serving can import it without pulling in the training side.
"""
