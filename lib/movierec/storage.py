"""Folders on S3-compatible object storage (MinIO, Chameleon's object store) or on disk.

Commands take a plain path or ``s3://bucket/prefix``. A remote folder is published atomically
from a reader's view: its files go under a fresh generation prefix
(``<prefix>/_v<time>-<id>/``), then one small object, ``<prefix>/_COMPLETE`` (the manifest:
the generation and the sha256 and size of every file), is written last. A reader starts from
the manifest, so it sees the old folder or the new one, never a mix, and a folder whose upload
stopped half-way has no manifest and is refused. The previous generation is kept (a reader may
still be downloading it); older ones are deleted, but never one that another upload to the
same prefix may still be copying (started after the previous one, or within the last hour).

Credentials come from the environment only: ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``; the endpoint from ``MOVIEREC_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL`` (e.g. ``http://platform-minio.movierec-platform:9000``; none means AWS);
the region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``. No message ever shows a credential.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from movierec.config import get_settings
from movierec.data.sources import sha256_file
from movierec.files import write_text_atomic
from movierec.infra.commands import ToolMissingError

SCHEME = "s3://"
MANIFEST = "_COMPLETE"
MANIFEST_FORMAT = 1
GENERATION_PREFIX = "_v"
LOCK_FILE, LATEST_COPY = ".lock", ".latest"  # materialize's lock and its newest copy's name
GENERATION_PATTERN = re.compile(r"_v\d{8}T\d{6}-[0-9a-f]{8}")  # as upload_folder names it
UPLOAD_GRACE_S = 3600.0  # a generation this young may be another upload still copying
ENV_ENDPOINT = "MOVIEREC_S3_ENDPOINT"
ENDPOINT_ENVS = (ENV_ENDPOINT, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CREDENTIAL_ENVS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SECRET_ENVS = (*CREDENTIAL_ENVS, "AWS_SESSION_TOKEN")

log = logging.getLogger("movierec.storage")


class StorageError(ValueError):
    """Object storage cannot be used as asked (unreachable, incomplete or corrupted folder).

    A ValueError, so the CLI prints it as one line (exit 2) like other user-fixable errors.
    """


class MissingCredentialsError(ToolMissingError):
    """The environment lacks the object-storage credentials (names which variables)."""


@dataclass(frozen=True)
class RemoteFolder:
    """A parsed ``s3://bucket/prefix`` URI.

    Attributes:
        bucket: Bucket name.
        prefix: Key prefix without slashes at either end (may be empty).
    """

    bucket: str
    prefix: str

    @property
    def root(self) -> str:
        """``bucket/prefix`` as pyarrow's S3 filesystem names it."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def key(self, *parts: str) -> str:
        """The pyarrow path of ``parts`` under this folder."""
        return "/".join([self.root, *parts])

    def __str__(self) -> str:
        return SCHEME + self.root


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return isinstance(uri, str) and uri.startswith(SCHEME)


def parse_uri(uri: str) -> RemoteFolder:
    """``s3://bucket/a/b/`` -> RemoteFolder("bucket", "a/b"); a clear error when malformed."""
    if not is_remote(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI (use s3://BUCKET/PREFIX)")
    bucket, _, prefix = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket (use s3://BUCKET/PREFIX)")
    return RemoteFolder(bucket, prefix.strip("/"))


def endpoint() -> str | None:
    """The endpoint URL from the environment (first of ENDPOINT_ENVS), or None for AWS."""
    return next((os.environ[name] for name in ENDPOINT_ENVS if os.environ.get(name)), None)


def _redact(text: str) -> str:
    """``text`` with the value of every credential variable masked."""
    for name in SECRET_ENVS:
        value = os.environ.get(name)
        if value:
            text = text.replace(value, "***")
    return text


def filesystem(uri: str) -> Any:
    """A pyarrow S3FileSystem for ``uri`` configured from the environment.

    Raises:
        MissingCredentialsError: AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is unset.
    """
    from pyarrow import fs  # noqa: PLC0415 - only the remote paths need it

    missing = [name for name in CREDENTIAL_ENVS if not os.environ.get(name)]
    if missing:
        raise MissingCredentialsError(
            f"{uri}: object storage needs credentials in the environment: set "
            f"{' and '.join(missing)} (and {ENV_ENDPOINT}=http://HOST:PORT for MinIO or "
            "Chameleon's object store)")
    url = endpoint()
    options: dict[str, Any] = {}
    if url:
        scheme, sep, host = url.partition("://")
        options = ({"scheme": scheme, "endpoint_override": host.rstrip("/")} if sep
                   else {"endpoint_override": url.rstrip("/")})
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # Explicit credentials and region: no lookup of ~/.aws or the EC2 metadata service (which
    # hangs off AWS); few retries so an unreachable endpoint fails in seconds, not minutes.
    return fs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None, region=region,
        connect_timeout=5, request_timeout=60,
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=3), **options)


def _storage_error(uri: str, action: str, error: Exception) -> StorageError:
    """A one-line StorageError for a failed object-store call (credentials masked)."""
    text = _redact(str(error))
    where = endpoint() or "AWS S3"
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "resolve" in text:
        hint = (f"cannot reach the object store at {_redact(where)}: check {ENV_ENDPOINT} "
                "(or AWS_ENDPOINT_URL) and that the service is up")
    elif "ACCESS_DENIED" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        hint = ("the object store rejected the credentials: check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY")
    elif "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        hint = f"bucket {parse_uri(uri).bucket!r} does not exist: create it first"
    else:
        hint = text.splitlines()[0] if text else type(error).__name__
    return StorageError(f"{uri}: {action} failed: {hint}")


def build_manifest(local: Path, generation: str) -> dict[str, Any]:
    """The manifest of folder ``local`` published as ``generation``."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"{local} holds no files: nothing to upload")
    return {"format": MANIFEST_FORMAT, "generation": generation,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {p.relative_to(local).as_posix(): {"sha256": sha256_file(p),
                                                        "size": p.stat().st_size}
                      for p in files}}


def _new_generation() -> str:
    """A generation name: the upload's time and a random suffix (GENERATION_PATTERN)."""
    return (f"{GENERATION_PREFIX}{_generation_stamp(time.time())}"
            f"-{uuid.uuid4().hex[:8]}")


def upload_folder(local: str | Path, uri: str) -> dict[str, Any]:
    """Publish folder ``local`` at ``uri`` (files first, manifest last); return the manifest.

    Raises:
        FileNotFoundError: ``local`` is not a folder.
        MissingCredentialsError, StorageError: As for every remote call.
    """
    from pyarrow import fs as pafs  # noqa: PLC0415

    local = Path(local)
    if not local.is_dir():
        raise FileNotFoundError(f"{local}: no such folder to upload")
    remote = parse_uri(uri)
    s3 = filesystem(uri)
    generation = _new_generation()
    manifest = build_manifest(local, generation)
    try:
        try:
            previous = _read_manifest(s3, remote)
        except ValueError:  # an unreadable old manifest: replaced below, nothing to keep
            previous = None
        for name in manifest["files"]:
            pafs.copy_files(str(local / name), remote.key(generation, name),
                            destination_filesystem=s3)
        # The single write that switches readers to the new generation.
        with s3.open_output_stream(remote.key(MANIFEST)) as out:
            out.write(json.dumps(manifest, indent=1).encode())
    except OSError as error:
        raise _storage_error(uri, "upload", error) from None
    try:  # the upload is done: a failed cleanup leaves old files, not a broken folder
        _delete_generations(s3, remote, generation, (previous or {}).get("generation"))
    except OSError as error:
        log.warning("%s", _storage_error(uri, "deleting old generations (the upload itself "
                                              "succeeded)", error))
    return manifest


def _generation_stamp(seconds: float) -> str:
    """A moment as generation names write it (UTC ``YYYYmmddTHHMMSS``; sorts as text)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))


def _generation_time(name: str) -> str:
    """The start time in a generation's name (``YYYYmmddTHHMMSS``; sorts as text)."""
    return name[len(GENERATION_PREFIX):len(GENERATION_PREFIX) + 15]


def _delete_generations(s3: Any, remote: RemoteFolder, published: str,
                        previous: str | None) -> None:
    """Delete the generations under ``remote`` that no reader or uploader can still need.

    Kept: ``published`` (the new one), ``previous`` (a reader may still be downloading it),
    and any started after ``previous`` or less than ``UPLOAD_GRACE_S`` ago: another upload
    to the same prefix may still be copying its files, and deleting them would leave its
    manifest naming files that are gone. Those go at a later upload.
    """
    from pyarrow import fs as pafs  # noqa: PLC0415

    recent = _generation_stamp(time.time() - UPLOAD_GRACE_S)
    cutoff = min(recent, _generation_time(previous)) if previous else recent
    for info in s3.get_file_info(pafs.FileSelector(remote.root, allow_not_found=True)):
        if (info.type == pafs.FileType.Directory
                and GENERATION_PATTERN.fullmatch(info.base_name)
                and info.base_name not in (published, previous)
                and _generation_time(info.base_name) < cutoff):
            s3.delete_dir(info.path)


def _read_manifest(s3: Any, remote: RemoteFolder) -> dict[str, Any] | None:
    """The manifest at ``remote``, or None when there is none (raises OSError on I/O)."""
    from pyarrow import fs as pafs  # noqa: PLC0415

    if s3.get_file_info(remote.key(MANIFEST)).type != pafs.FileType.File:
        return None
    with s3.open_input_stream(remote.key(MANIFEST)) as handle:
        return json.loads(handle.read())


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of remote folder ``uri``.

    Raises:
        StorageError: No ``_COMPLETE`` (nothing there, or an upload that did not finish), or
            a manifest this version cannot read.
    """
    remote = parse_uri(uri)
    try:
        manifest = _read_manifest(filesystem(uri), remote)
    except OSError as error:
        raise _storage_error(uri, "reading the manifest", error) from None
    except json.JSONDecodeError:
        raise StorageError(f"{uri}: {MANIFEST} is not valid JSON: upload the folder "
                           "again") from None
    if manifest is None:
        raise StorageError(f"{uri}: no {MANIFEST} manifest, so the folder is missing or its "
                           "upload did not finish: upload it again")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(
            manifest.get("files"), dict) or not manifest.get("generation"):
        raise StorageError(f"{uri}: {MANIFEST} has an unknown format "
                           f"{manifest.get('format')!r} (expected {MANIFEST_FORMAT})")
    # The generation names a local folder too (materialize): a plain name, nothing else.
    if not GENERATION_PATTERN.fullmatch(str(manifest["generation"])):
        raise StorageError(f"{uri}: {MANIFEST} names an invalid generation "
                           f"{manifest['generation']!r}: upload the folder again")
    return manifest


def download_folder(uri: str, local: str | Path,
                    manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Download remote folder ``uri`` into the new folder ``local``, verifying every file.

    ``local`` appears only when every file matched its sha256 (downloaded beside it, then
    renamed). Returns the manifest.

    Raises:
        FileExistsError: ``local`` already exists.
        StorageError: No manifest, a file missing or differing from its sha256.
    """
    from pyarrow import fs as pafs  # noqa: PLC0415

    local = Path(local)
    if local.exists():
        raise FileExistsError(f"{local} exists: download into a new folder")
    remote = parse_uri(uri)
    manifest = manifest or read_manifest(uri)
    s3 = filesystem(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for name, expected in manifest["files"].items():
            target = tmp / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise StorageError(f"{uri}: {MANIFEST} names an unsafe path {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            key = remote.key(manifest["generation"], name)
            try:
                pafs.copy_files(key, str(target), source_filesystem=s3)
            except FileNotFoundError:
                raise StorageError(f"{uri}: {name} is listed in {MANIFEST} but missing from "
                                   "the store: upload the folder again") from None
            except OSError as error:
                raise _storage_error(uri, f"downloading {name}", error) from None
            if sha256_file(target) != expected["sha256"]:
                raise StorageError(f"{uri}: {name} does not match its sha256 in {MANIFEST} "
                                   "(corrupted or changed after upload): upload it again")
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def cache_dir(uri: str) -> Path:
    """Where ``materialize`` keeps local copies of ``uri``: ``$MOVIEREC_HOME/remote/<hash>``."""
    digest = hashlib.sha256(str(parse_uri(uri)).encode()).hexdigest()[:20]
    return get_settings().home / "remote" / digest


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def materialize(uri: str | Path) -> Path:
    """A verified local copy of ``uri`` (a local path is returned as it is).

    Each remote generation gets its own folder, ``cache_dir(uri)/<generation>``: a new
    upload downloads beside the copy that running jobs may still read, and only copies
    older than the previous one are deleted (as on the store). A copy is reused while its
    files keep their sizes; a lock makes concurrent calls wait for one download.
    """
    if not is_remote(uri):
        return Path(uri)
    uri = str(uri)
    manifest = read_manifest(uri)
    root = cache_dir(uri)
    folder = root / manifest["generation"]
    with _locked(root):
        if folder.is_dir() and _cache_matches(folder, manifest):
            return folder
        if folder.exists():  # a damaged copy: renamed away first, so the name is free
            damaged = root / f".{folder.name}.damaged-{uuid.uuid4().hex[:8]}"
            os.replace(folder, damaged)
            shutil.rmtree(damaged, ignore_errors=True)
        download_folder(uri, folder, manifest)
        # Keep this copy and the one served before it, as upload_folder keeps two generations
        # on the store. By record: two uploads in one second would not sort by time.
        previous = _previous_copy(root, folder.name)
        keep = {folder.name, previous, LOCK_FILE, LATEST_COPY}
        write_text_atomic(root / LATEST_COPY, f"{folder.name}\n{previous}\n")
        # Anything else goes, the old layout included (the copy lay in root itself then,
        # stamped beside it).
        stale = [p for p in root.iterdir() if p.name not in keep]
        stale.append(root.with_name(root.name + ".manifest.json"))
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return folder


def _previous_copy(root: Path, current: str) -> str:
    """The copy to keep beside ``current``: the one served before it.

    ``.latest`` records the newest copy and the one before; downloading the newest again
    (a damaged copy) keeps that one. A cache without the record keeps its newest other
    generation by name.
    """
    record = root / LATEST_COPY
    if record.is_file():
        names = [*record.read_text().split(), "", ""]
        return names[1] if names[0] == current else names[0]
    others = sorted(p.name for p in root.iterdir()
                    if GENERATION_PATTERN.fullmatch(p.name) and p.name != current)
    return others[-1] if others else ""


def _cache_matches(folder: Path, manifest: dict[str, Any]) -> bool:
    """No file listed in ``manifest`` went missing from ``folder`` or changed size.

    A generation's files never change on the store (a new upload is a new generation), and
    ``download_folder`` checked their sha256 when it made the copy.
    """
    return all((folder / name).is_file() and (folder / name).stat().st_size == meta["size"]
               for name, meta in manifest["files"].items())


def pyarrow_location(uri: str | Path) -> tuple[str, Any]:
    """``(path, filesystem)`` for libraries that take a pyarrow filesystem (Ray Train).

    A local path gives ``(absolute path, None)``; ``s3://b/p`` gives ``("b/p", S3FileSystem)``.
    """
    if not is_remote(uri):
        return str(Path(uri).expanduser().resolve()), None
    remote = parse_uri(str(uri))
    return remote.root, filesystem(str(uri))
