"""Process-wide settings read from the environment (one place, typed)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ENV_HOME = "MOVIEREC_HOME"
ENV_DATASETS = "MOVIEREC_DATASETS"
ENV_GROUPLENS_URL = "MOVIEREC_GROUPLENS_URL"
DEFAULT_GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"


class Settings(BaseModel):
    """Where movierec keeps its state and finds its inputs.

    Attributes:
        home: Cache and state root (downloads, MLflow database, reports).
        datasets: Optional folder of local dataset copies (``<datasets>/<name>``), used
            before any download; CI points it at the shared MovieLens copy.
        grouplens_url: Base URL of the GroupLens release zips (overridable for mirrors/tests).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path
    datasets: Path | None = None
    grouplens_url: str = DEFAULT_GROUPLENS_URL

    @property
    def downloads(self) -> Path:
        """Folder of verified downloads."""
        return self.home / "downloads"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or SQLite under ``home``."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"


def get_settings() -> Settings:
    """Read settings from the environment (called per use, so tests can monkeypatch env)."""
    home = Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "movierec").expanduser()
    datasets = os.environ.get(ENV_DATASETS)
    return Settings(
        home=home.resolve(),
        datasets=Path(datasets).expanduser().resolve() if datasets else None,
        grouplens_url=(os.environ.get(ENV_GROUPLENS_URL) or DEFAULT_GROUPLENS_URL).rstrip("/"),
    )
