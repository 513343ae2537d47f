"""Shared fixtures: an isolated MOVIEREC_HOME per test and the local MovieLens 100K copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MOVIEREC_HOME, and GroupLens points at an unroutable URL."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MOVIEREC_HOME", str(home))
    # No test touches the network: any accidental download fails fast and loudly.
    monkeypatch.setenv("MOVIEREC_GROUPLENS_URL", "http://127.0.0.1:9/no-network")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    return home


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The shared MovieLens 100K copy (RecBole atomic files), found via MOVIEREC_DATASETS."""
    root = os.environ.get("MOVIEREC_DATASETS")
    if not root or not (Path(root) / "ml-100k").is_dir():
        pytest.fail("MovieLens 100K not found: set MOVIEREC_DATASETS to the folder holding "
                    "ml-100k/ (make test and .ci/run do this for ../shared/data)")
    return Path(root) / "ml-100k"


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared synthetic dataset (60 users, 300 items) for fast training tests."""
    from movierec.config import Settings
    from movierec.data.prepare import PrepareConfig, prepare
    from movierec.data.synth import SynthConfig, write_synthetic

    root = tmp_path_factory.mktemp("small")
    write_synthetic(SynthConfig(interactions=3_000, users=60, items=300, seed=1), root / "raw")
    prepare(PrepareConfig(dataset="canonical"), root / "prepared", source=root / "raw",
            settings=Settings(home=root / "home"))
    return root / "prepared"


@pytest.fixture(scope="session")
def ml100k_prepared(tmp_path_factory: pytest.TempPathFactory, ml100k_dir: Path) -> Path:
    """MovieLens 100K prepared once per session."""
    from movierec.config import Settings
    from movierec.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("ml100k")
    prepare(PrepareConfig(dataset="ml-100k"), root / "prepared", source=ml100k_dir,
            settings=Settings(home=root / "home"))
    return root / "prepared"
