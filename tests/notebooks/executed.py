"""Helpers for reading notebooks that papermill executed."""

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def count_images(notebook: Path) -> int:
    """How many PNG figures an executed notebook shows."""
    executed = nbformat.read(notebook, as_version=4)
    return sum("image/png" in output.get("data", {})
               for cell in executed.cells for output in cell.get("outputs", []))
