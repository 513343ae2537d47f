"""Folders on S3-compatible object storage, against an in-process S3 endpoint (moto)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from movierec import storage
from movierec.cli.main import main
from movierec.serving.loadtest import free_port

ACCESS_KEY = "test-access-id-movierec"
FAKE_SECRET = "fake-value-that-must-never-show"


@dataclass
class S3:
    """One test's bucket on the shared in-process endpoint."""

    endpoint: str
    bucket: str
    client: Any

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 API on 127.0.0.1 (moto), shared by the module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """Fake credentials and the endpoint in the environment, and a fresh bucket."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "MOVIEREC_RAY_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(storage.ENV_ENDPOINT, s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=FAKE_SECRET)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(s3_endpoint, bucket, client)


def _folder(root: Path, extra: str = "") -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"data_version": "v1" + extra}))
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 40 + extra.encode())
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_uris_are_parsed_and_local_paths_pass_through(tmp_path: Path) -> None:
    assert storage.is_remote("s3://b/p") and not storage.is_remote("data/ml-100k")
    assert not storage.is_remote(tmp_path)
    assert storage.parse_uri("s3://bucket/a/b/") == storage.RemoteFolder("bucket", "a/b")
    assert storage.parse_uri("s3://bucket").root == "bucket"
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.parse_uri("s3:///prefix")
    assert storage.materialize(tmp_path / "x") == tmp_path / "x"  # local: untouched


def test_round_trip_with_a_manifest_written_last(s3: S3, tmp_path: Path) -> None:
    local = _folder(tmp_path / "a")
    manifest = storage.upload_folder(local, s3.uri("data/a"))
    assert manifest["files"]["sub/weights.bin"]["sha256"] == hashlib.sha256(
        (local / "sub" / "weights.bin").read_bytes()).hexdigest()
    generation = manifest["generation"]
    assert [k for k in s3.keys("data/a/") if not k.endswith("/")] == sorted([
        "data/a/_COMPLETE", f"data/a/{generation}/dataset.json",
        f"data/a/{generation}/sub/weights.bin"])
    stored = json.loads(s3.client.get_object(Bucket=s3.bucket, Key="data/a/_COMPLETE")[
        "Body"].read())
    assert stored == manifest
    storage.download_folder(s3.uri("data/a"), tmp_path / "b")
    assert _tree(tmp_path / "b") == _tree(local)
    with pytest.raises(FileExistsError):
        storage.download_folder(s3.uri("data/a"), tmp_path / "b")


class _Clock:
    """``time`` as storage uses it, at a moment the test moves on."""

    strftime = staticmethod(time.strftime)

    def __init__(self, now: float) -> None:
        self.now = now

    def gmtime(self, seconds: float | None = None) -> time.struct_time:
        return time.gmtime(self.now if seconds is None else seconds)

    def time(self) -> float:  # last: in the class body it hides the module from here on
        return self.now


def _generations(s3: S3, prefix: str) -> set[str]:
    return {k.split("/")[2] for k in s3.keys(f"{prefix}/")
            if k.count("/") >= 3 and not k.endswith("/")}


def test_reupload_switches_atomically_and_keeps_one_previous_generation(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1_800_000_000.0)
    monkeypatch.setattr(storage, "time", clock)
    uri = s3.uri("data/a")
    generations = []
    for i in range(3):  # a day apart: nothing is young enough to be another's upload
        generations.append(storage.upload_folder(_folder(tmp_path / str(i), extra=str(i)),
                                                 uri)["generation"])
        clock.now += 86_400
    assert len(set(generations)) == 3
    assert _generations(s3, "data/a") == set(generations[1:])  # the oldest went
    storage.download_folder(uri, tmp_path / "got")
    assert json.loads((tmp_path / "got" / "dataset.json").read_text())["data_version"] == "v12"


def test_an_upload_never_deletes_another_upload_still_copying(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1_800_000_000.0)
    monkeypatch.setattr(storage, "time", clock)
    uri = s3.uri("data/b")
    first = storage.upload_folder(_folder(tmp_path / "first"), uri)["generation"]
    clock.now += 86_400
    # Another upload started before this one and is still copying: files, no manifest yet.
    started = time.strftime("%Y%m%dT%H%M%S", clock.gmtime())
    copying = f"{storage.GENERATION_PREFIX}{started}-0000beef"
    s3.client.put_object(Bucket=s3.bucket, Key=f"data/b/{copying}/dataset.json", Body=b"{}")
    clock.now += 60
    second = storage.upload_folder(_folder(tmp_path / "second", extra="2"), uri)["generation"]
    assert _generations(s3, "data/b") == {first, copying, second}
    # A day later it is long finished or abandoned: the next upload clears it.
    clock.now += 86_400
    third = storage.upload_folder(_folder(tmp_path / "third", extra="3"), uri)["generation"]
    assert _generations(s3, "data/b") == {second, third}


def test_a_folder_without_manifest_is_refused(s3: S3, tmp_path: Path) -> None:
    # An upload that stopped before its manifest: files present, no _COMPLETE.
    s3.client.put_object(Bucket=s3.bucket, Key="half/_v1-x/dataset.json", Body=b"{}")
    with pytest.raises(storage.StorageError, match=r"no _COMPLETE manifest.*did not finish"):
        storage.download_folder(s3.uri("half"), tmp_path / "d")
    with pytest.raises(storage.StorageError, match="no _COMPLETE"):
        storage.materialize(s3.uri("nothing/here"))
    assert not (tmp_path / "d").exists()


def test_corrupted_or_missing_files_are_refused_and_leave_nothing(s3: S3,
                                                                   tmp_path: Path) -> None:
    uri = s3.uri("data/a")
    generation = storage.upload_folder(_folder(tmp_path / "a"), uri)["generation"]
    key = f"data/a/{generation}/sub/weights.bin"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"tampered")
    with pytest.raises(storage.StorageError, match=r"sub/weights\.bin does not match its sha256"):
        storage.download_folder(uri, tmp_path / "d")
    s3.client.delete_object(Bucket=s3.bucket, Key=key)
    with pytest.raises(storage.StorageError, match=r"sub/weights\.bin is listed .* but missing"):
        storage.materialize(uri)
    assert not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind
    s3.client.put_object(Bucket=s3.bucket, Key="data/a/_COMPLETE", Body=b'{"format": 9}')
    with pytest.raises(storage.StorageError, match="unknown format 9"):
        storage.read_manifest(uri)


def test_materialize_reuses_the_cache_and_keeps_the_copy_a_reader_may_hold(
        s3: S3, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = s3.uri("data/a")
    storage.upload_folder(_folder(tmp_path / "v1"), uri)
    downloads = []
    real = storage.download_folder
    monkeypatch.setattr(storage, "download_folder",
                        lambda *a, **k: downloads.append(a[0]) or real(*a, **k))
    first = storage.materialize(uri)
    assert first.is_relative_to(isolated_home / "remote")
    assert storage.materialize(uri) == first and len(downloads) == 1  # reused
    storage.upload_folder(_folder(tmp_path / "v2", extra="new"), uri)
    second = storage.materialize(uri)  # manifest changed: a new copy beside the old one
    assert second != first and len(downloads) == 2
    assert json.loads((second / "dataset.json").read_text())["data_version"] == "v1new"
    assert json.loads((first / "dataset.json").read_text())["data_version"] == "v1"
    (second / "sub" / "weights.bin").unlink()  # a damaged copy is downloaded again
    assert storage.materialize(uri) == second and len(downloads) == 3
    assert (second / "sub" / "weights.bin").is_file()
    assert first.is_dir()  # still the copy served before, which a reader may hold
    storage.upload_folder(_folder(tmp_path / "v3", extra="3"), uri)
    third = storage.materialize(uri)
    # Only the previous copy is kept, as on the store; nothing temporary is left.
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        [".latest", ".lock", second.name, third.name])


def test_concurrent_materialize_calls_share_one_download(s3: S3, tmp_path: Path,
                                                         isolated_home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    uri = s3.uri("data/a")
    storage.upload_folder(_folder(tmp_path / "v1"), uri)
    downloads = []
    real = storage.download_folder

    def slow_download(*args: Any, **kwargs: Any) -> dict[str, Any]:
        downloads.append(args[1])
        time.sleep(0.3)  # long enough for the other calls to arrive meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "download_folder", slow_download)
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: storage.materialize(uri), range(4)))
    assert len(set(folders)) == 1 and len(downloads) == 1
    assert _tree(folders[0]) == _tree(tmp_path / "v1")


def test_a_failed_cleanup_of_old_generations_does_not_fail_the_upload(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    uri = s3.uri("data/a")
    for i in range(2):
        storage.upload_folder(_folder(tmp_path / str(i), extra=str(i)), uri)

    def access_denied(s3fs: Any, remote: storage.RemoteFolder, *generations: str) -> None:
        raise OSError(f"AccessDenied deleting under {remote} with {FAKE_SECRET}")

    monkeypatch.setattr(storage, "_delete_generations", access_denied)
    with caplog.at_level(logging.WARNING, logger="movierec.storage"):
        manifest = storage.upload_folder(_folder(tmp_path / "2", extra="2"), uri)
    assert storage.read_manifest(uri) == manifest  # readers see the new folder
    assert "the upload itself succeeded" in caplog.text and FAKE_SECRET not in caplog.text


def test_missing_credentials_name_the_variables(s3: S3, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(storage.MissingCredentialsError, match="set AWS_SECRET_ACCESS_KEY"):
        storage.read_manifest(s3.uri("x"))
    assert main(["data", "push", str(_folder(tmp_path / "a")), s3.uri("x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AWS_SECRET_ACCESS_KEY" in err and ACCESS_KEY not in err


def test_unreachable_endpoint_is_one_clear_error_without_secrets(
        s3: S3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(storage.ENV_ENDPOINT, f"http://127.0.0.1:{free_port()}")
    assert main(["data", "info", s3.uri("data/a")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the object store at http://127.0.0.1:" in err
    assert FAKE_SECRET not in err and ACCESS_KEY not in err and "Traceback" not in err


def test_error_text_is_redacted(s3: S3) -> None:
    error = storage._storage_error(s3.uri("x"), "upload", OSError(
        f"AWS Error ACCESS_DENIED for key {ACCESS_KEY} with secret {FAKE_SECRET}"))
    assert "rejected the credentials" in str(error)
    assert FAKE_SECRET not in str(error) and ACCESS_KEY not in str(error)
    assert storage._redact(f"a {FAKE_SECRET} b") == "a *** b"


def test_cli_prepare_push_pull_info_through_s3(s3: S3, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--interactions", "1500", "--users", "40", "--items", "120",
                 "--out", str(tmp_path / "raw")]) == 0
    assert main(["data", "push", str(tmp_path / "raw"), s3.uri("raw")]) == 0
    uri = s3.uri("prepared/synth")
    assert main(["data", "prepare", "--dataset", "canonical", "--source", s3.uri("raw"),
                 "--out", uri]) == 0
    printed = capsys.readouterr().out
    assert f"uploaded    {uri}" in printed
    manifest = storage.read_manifest(uri)
    assert {"dataset.json", "interactions.parquet", "items.parquet"} <= set(manifest["files"])
    assert main(["data", "pull", uri, "--out", str(tmp_path / "pulled")]) == 0
    card = json.loads((tmp_path / "pulled" / "dataset.json").read_text())
    assert main(["data", "info", uri, "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1])["data_version"] == card["data_version"]
    assert card["interactions"] == 1500
    assert FAKE_SECRET not in printed + out and ACCESS_KEY not in printed + out
    assert main(["data", "prepare", "--dataset", "canonical", "--source", str(tmp_path / "raw"),
                 "--out", "s3://"]) == 2  # refused before any work
    assert "names no bucket" in capsys.readouterr().err


def test_train_storage_flag_and_ray_run_storage(s3: S3, isolated_home: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from pyarrow import fs

    from movierec.training.ray_runner import ENV_RAY_STORAGE, run_storage

    assert main(["train", "--data", "unused", "--storage", s3.uri("ckpt")]) == 2
    assert "--storage holds Ray Train checkpoints" in capsys.readouterr().err
    path, filesystem = run_storage(s3.uri("ray/checkpoints/"))
    assert path == f"{s3.bucket}/ray/checkpoints" and isinstance(filesystem, fs.S3FileSystem)
    # The filesystem really reaches the bucket (what Ray Train will write through).
    with filesystem.open_output_stream(f"{path}/probe") as out:
        out.write(b"ok")
    assert s3.keys("ray/") == ["ray/checkpoints/probe"]
    assert run_storage(None) == (str(isolated_home / "ray_results"), None)
    monkeypatch.setenv(ENV_RAY_STORAGE, s3.uri("from-env"))
    assert run_storage(None)[0] == f"{s3.bucket}/from-env"


def test_workflows_pass_the_object_store_settings_the_code_reads() -> None:
    import yaml

    from movierec.infra.commands import repo_root
    from movierec.training.ray_runner import ENV_RAY_STORAGE

    root = repo_root()
    secret = (root / "k8s" / "platform" / "templates" / "credentials.yaml").read_text()
    for name in ("train", "evaluate-register", "lifecycle"):
        doc = yaml.safe_load((root / "workflows" / f"{name}.yaml").read_text())
        [template] = doc["spec"]["templates"]
        env = {e["name"]: e for e in template["container"]["env"]}
        assert "platform-minio" in json.dumps(doc["spec"]["arguments"]), name
        assert env[storage.ENV_ENDPOINT]["value"].startswith("{{"), name
        for variable in storage.CREDENTIAL_ENVS:
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "platform-credentials", (name, variable)
            assert f"  {ref['key']}:" in secret, (name, ref["key"])  # a key the chart writes
    train = (root / "workflows" / "train.yaml").read_text()
    assert '--out "$data"' in train and '--data "$data"' in train
    assert '--storage "{{inputs.parameters.storage}}"' in train
    evaluate = (root / "workflows" / "evaluate-register.yaml").read_text()
    assert 'movierec data pull "{{inputs.parameters.data-uri}}" --out /work/data' in evaluate
    lifecycle = yaml.safe_load((root / "workflows" / "lifecycle.yaml").read_text())
    env = {e["name"]: e.get("value") for e in
           lifecycle["spec"]["templates"][0]["container"]["env"]}
    assert env[ENV_RAY_STORAGE] == "{{workflow.parameters.storage}}"


def test_a_manifest_cannot_name_a_path_as_its_generation(s3: S3, tmp_path: Path) -> None:
    uri = s3.uri("data/a")
    manifest = storage.upload_folder(_folder(tmp_path / "a"), uri)
    # The generation becomes a local folder name: "../.." would reach outside the cache.
    bad = {**manifest, "generation": "../../victim"}
    s3.client.put_object(Bucket=s3.bucket, Key="data/a/_COMPLETE", Body=json.dumps(bad).encode())
    with pytest.raises(storage.StorageError, match="invalid generation"):
        storage.materialize(uri)


def test_materialize_clears_the_old_cache_layout(s3: S3, tmp_path: Path,
                                                 isolated_home: Path) -> None:
    uri = s3.uri("data/a")
    storage.upload_folder(_folder(tmp_path / "a"), uri)
    root = storage.cache_dir(uri)  # a copy laid out as earlier versions left it
    (root / "sub").mkdir(parents=True)
    (root / "dataset.json").write_text("{}")
    stamp = root.with_name(root.name + ".manifest.json")
    stamp.write_text("{}")
    folder = storage.materialize(uri)
    assert sorted(p.name for p in root.iterdir()) == [".latest", ".lock", folder.name]
    assert not stamp.exists()


def test_the_copy_kept_is_the_one_served_before_not_the_first_by_name(
        s3: S3, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two uploads in one second: their generations sort by their random suffix, not time.
    names = iter(["_v20261207T120000-ffffffff", "_v20261207T120000-00000000",
                  "_v20261207T120000-88888888"])
    monkeypatch.setattr(storage, "_new_generation", lambda: next(names))
    uri = s3.uri("data/a")
    copies = []
    for i in range(3):
        storage.upload_folder(_folder(tmp_path / str(i), extra=str(i)), uri)
        copies.append(storage.materialize(uri).name)
    assert copies == ["_v20261207T120000-ffffffff", "_v20261207T120000-00000000",
                      "_v20261207T120000-88888888"]
    kept = sorted(p.name for p in storage.cache_dir(uri).iterdir() if p.name.startswith("_v"))
    assert kept == sorted(copies[1:])  # the newest and the one before, whatever their names
