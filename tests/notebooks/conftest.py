"""What every papermill kernel needs: its own MOVIEREC_HOME, the shared ml-100k, no network."""

from pathlib import Path

import pytest


@pytest.fixture
def notebook_home(tmp_path: Path, ml100k_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Set the environment papermill kernels inherit; return their MOVIEREC_HOME."""
    home = tmp_path / "home"
    # Absolute, since the kernels run in tmp_path.
    monkeypatch.setenv("MOVIEREC_DATASETS", str(ml100k_dir.parent.resolve()))
    monkeypatch.setenv("MOVIEREC_HOME", str(home))
    # Any attempt to reach GroupLens fails at once instead of touching the network.
    monkeypatch.setenv("MOVIEREC_GROUPLENS_URL", "http://127.0.0.1:9/no-network")
    # Every kernel (and Ray worker) logs to and reads from the same store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return home
