"""prepare -> train -> export -> serve with data and bundles on S3 (moto), through the CLI."""

from __future__ import annotations

import json
import logging
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from movierec import storage
from movierec.cli.main import main
from movierec.registry.bundle import verify_bundle
from movierec.serving.loadtest import free_port

pytestmark = pytest.mark.slow

FAKE_SECRET = "fake-integration-value-never-printed"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on an in-process S3 endpoint, with fake credentials in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(storage.ENV_ENDPOINT, endpoint)
    name = f"movierec-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    yield name
    server.stop()


def test_prepare_train_export_serve_through_object_storage(
        bucket: str, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data_uri, bundle_uri = f"s3://{bucket}/prepared/synth", f"s3://{bucket}/bundles/v1"
    assert main(["data", "synth", "--interactions", "3000", "--users", "60", "--items", "300",
                 "--seed", "1", "--out", str(tmp_path / "raw")]) == 0
    assert main(["data", "prepare", "--dataset", "canonical", "--source",
                 str(tmp_path / "raw"), "--out", data_uri]) == 0
    metrics = tmp_path / "m.json"
    assert main(["train", "--data", data_uri, "--epochs", "1", "--quiet",
                 "--metrics-out", str(metrics)]) == 0
    run_id = json.loads(metrics.read_text())["run_id"]
    assert main(["export", "--run", run_id, "--data", data_uri, "--out", bundle_uri,
                 "--register"]) == 0
    out = capsys.readouterr().out
    assert f"uploaded {bundle_uri}" in out and "registered movierec version 1" in out
    assert "metadata.json" in storage.read_manifest(bundle_uri)["files"]
    assert FAKE_SECRET not in out

    served = {}
    monkeypatch.setattr("movierec.serving.app.run_server",
                        lambda settings, **kw: served.update(settings=settings, **kw))
    assert main(["serve", "--bundle", bundle_uri, "--port", "0"]) == 0
    bundle = served["settings"].bundle
    assert bundle.is_relative_to(isolated_home / "remote")
    assert verify_bundle(bundle)["run_id"] == run_id
    # The data was downloaded once and reused by train and export: one copy each of the
    # data and the bundle.
    assert len(list((isolated_home / "remote").glob(f"*/{storage.GENERATION_PREFIX}*"))) == 2


def test_ray_train_reads_data_from_and_checkpoints_to_object_storage(
        bucket: str, small_prepared: Path, isolated_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from movierec.training.config import TrainConfig
    from movierec.training.runner import train_and_track

    data_uri = f"s3://{bucket}/prepared/small"
    manifest = storage.upload_folder(small_prepared, data_uri)
    assert not (isolated_home / "remote").exists()  # nobody has a copy yet
    driver_reads: list[str] = []
    read_manifest = storage.read_manifest

    def counted(uri: str) -> dict[str, object]:
        driver_reads.append(uri)
        return read_manifest(uri)

    monkeypatch.setattr(storage, "read_manifest", counted)  # the driver's reads only

    def on_sigterm(signum: int, frame: object) -> None:  # as the CLI's: an interruption
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # The URI goes to the workers, which download the data for themselves (on a
        # cluster the driver's copy is on another machine).
        result = train_and_track(TrainConfig(epochs=2), data_uri, workers=1,
                                 storage=f"s3://{bucket}/ray-results")
        # ray.init installs a SIGTERM handler that calls sys.exit: ours must survive it.
        assert signal.getsignal(signal.SIGTERM) is on_sigterm
    finally:  # its workers carry this test's environment (home, endpoint, keys)
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()
    assert result["best_epoch"] >= 1
    # One read of the manifest on the driver: the run is tagged with the data_version of
    # the generation the workers were told to read (a second read could see a newer one).
    assert driver_reads == [data_uri]
    card = json.loads((small_prepared / "dataset.json").read_text())
    assert result["data_version"] == card["data_version"] and manifest["generation"]
    assert len(list((isolated_home / "remote").glob(f"*/{storage.GENERATION_PREFIX}*"))) == 1
    client = boto3.client("s3", endpoint_url=storage.endpoint(),
                          region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any("checkpoint" in key for key in keys), keys[:10]


def test_a_worker_refuses_data_uploaded_after_the_driver_read_it(
        bucket: str, small_prepared: Path) -> None:
    from movierec.training.ray_runner import worker_data

    data_uri = f"s3://{bucket}/prepared/small"
    storage.upload_folder(small_prepared, data_uri)
    first = storage.materialize(data_uri)
    assert worker_data(data_uri, first.name) == first
    storage.upload_folder(small_prepared, data_uri)  # a new generation meanwhile
    with pytest.raises(RuntimeError, match="changed as training started"):
        worker_data(data_uri, first.name)
    assert worker_data(str(small_prepared), None) == small_prepared  # a local folder as it is
