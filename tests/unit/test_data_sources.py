import hashlib
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from movierec.config import get_settings
from movierec.data.sources import (
    RECBOLE_ML100K_PREFIX,
    FetchError,
    download,
    extract_recbole_ml100k,
    hash_path,
    resolve_source,
)
from tests.unit.data_fixtures import write_csv, zip_folder


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A loopback HTTP server standing in for GroupLens (no real network)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MOVIEREC_GROUPLENS_URL", f"http://127.0.0.1:{server.server_port}")
    yield root
    server.shutdown()


def test_download_verifies_and_records_checksum_on_first_use(mirror: Path, tmp_path: Path) -> None:
    zip_folder(write_csv(tmp_path / "ml-latest-small", ["1,1,4,1"]),
               mirror / "ml-latest-small.zip")
    first = resolve_source("ml-latest-small")
    assert first.origin.startswith("GroupLens http://127.0.0.1")
    assert first.sha256 == hashlib.sha256((mirror / "ml-latest-small.zip").read_bytes()).hexdigest()
    assert first.sha256 in (get_settings().home / "checksums.json").read_text()
    # A cached file that changed afterwards is refused.
    with first.path.open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(FetchError, match=r"differs from the .* recorded on first use"):
        resolve_source("ml-latest-small")


def test_published_md5_mismatch_is_refused(mirror: Path, tmp_path: Path) -> None:
    zip_folder(write_csv(tmp_path / "ml-25m", ["1,1,4,1"]), mirror / "ml-25m.zip")
    (mirror / "ml-25m.zip.md5").write_text("0" * 32 + "  ml-25m.zip\n")
    with pytest.raises(FetchError, match="md5 does not match"):
        resolve_source("ml-25m")
    assert not (get_settings().downloads / "ml-25m.zip").exists()


def test_grouplens_bsd_style_md5_is_read(mirror: Path, tmp_path: Path) -> None:
    zip_folder(write_csv(tmp_path / "ml-1m", ["1,1,4,1"]), mirror / "ml-1m.zip")
    md5 = hashlib.md5((mirror / "ml-1m.zip").read_bytes(), usedforsecurity=False).hexdigest()
    (mirror / "ml-1m.zip.md5").write_text(f"MD5 (ml-1m.zip) = {md5}\n")  # GroupLens's form
    assert resolve_source("ml-1m").origin.startswith("GroupLens")
    (mirror / "ml-32m.zip").write_bytes((mirror / "ml-1m.zip").read_bytes())
    (mirror / "ml-32m.zip.md5").write_text(f"MD5 (ml-32m.zip) = {'f' * 32}\n")
    with pytest.raises(FetchError, match=r"md5 does not match GroupLens's published f{32}"):
        resolve_source("ml-32m")


def test_failed_download_leaves_no_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "d" / "x.zip"
    with pytest.raises(FetchError, match="cannot download"):
        download("http://127.0.0.1:9/x.zip", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_checksum_mismatch_never_lands(mirror: Path, tmp_path: Path) -> None:
    (mirror / "f.bin").write_bytes(b"abc")
    with pytest.raises(FetchError, match="does not match the expected"):
        download(f"{get_settings().grouplens_url}/f.bin", tmp_path / "f.bin",
                 expected_sha256="0" * 64)
    assert not (tmp_path / "f.bin").exists()


def test_unreachable_release_says_how_to_continue() -> None:
    with pytest.raises(FetchError, match="pass --source PATH"):
        resolve_source("ml-1m")


def test_recbole_wheel_extraction_is_pinned(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(RECBOLE_ML100K_PREFIX + "ml-100k.inter", "user_id:token\n")
        archive.writestr("recbole/other.py", "")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    source = extract_recbole_ml100k(wheel, tmp_path / "out", sha)
    assert sorted(p.name for p in source.path.iterdir()) == ["ml-100k.inter"]
    with pytest.raises(FetchError, match="is not the pinned"):
        extract_recbole_ml100k(wheel, tmp_path / "out2", "f" * 64)


def test_local_sources_and_errors(tmp_path: Path, ml100k_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_DATASETS", str(ml100k_dir.parent))
    found = resolve_source("ml-100k")
    assert "MOVIEREC_DATASETS" in found.origin and found.sha256 == hash_path(ml100k_dir)
    with pytest.raises(FetchError, match="does not exist"):
        resolve_source("ml-100k", tmp_path / "missing")
    with pytest.raises(FetchError, match="unknown dataset"):
        resolve_source("ml-7m")
    with pytest.raises(FetchError, match="needs --source"):
        resolve_source("canonical")


def test_a_local_copy_is_checked_before_use(tmp_path: Path, ml100k_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    datasets = tmp_path / "datasets"
    monkeypatch.setenv("MOVIEREC_DATASETS", str(datasets))
    # ml-100k in RecBole's layout: each file against its pin.
    shutil.copytree(ml100k_dir, datasets / "ml-100k")
    assert "sha256 pinned" in resolve_source("ml-100k").origin
    users = datasets / "ml-100k" / "ml-100k.user"
    users.write_text(users.read_text().replace("\tM\t", "\tF\t", 1))
    with pytest.raises(FetchError, match=r"ml-100k.user: sha256 .* is not the pinned"):
        resolve_source("ml-100k")
    assert resolve_source("ml-100k", datasets / "ml-100k").origin.startswith("local ")
    # A file beside the pinned ones (which the parser would read first) is refused.
    shutil.copy(ml100k_dir / "ml-100k.user", users)
    (datasets / "ml-100k" / ".DS_Store").write_text("hidden files do not count")
    (datasets / "ml-100k" / ".a.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    (datasets / "ml-100k" / ".x").mkdir()
    (datasets / "ml-100k" / ".x" / "u.data").write_text("1\t1\t5\t100\n")
    assert "sha256 pinned" in resolve_source("ml-100k").origin
    from movierec.data.movielens import Layout, detect_layout
    assert detect_layout(datasets / "ml-100k") == (Layout.ATOMIC, users.with_suffix(".inter"))
    (datasets / "ml-100k" / "u.data").write_text("1\t1\t5\t100\n")
    with pytest.raises(FetchError, match=r"holds u\.data besides the pinned ml-100k files"):
        resolve_source("ml-100k")
    # A pinned file missing: a truncated copy without it must not pass by trust on first use.
    (datasets / "ml-100k" / "u.data").unlink()
    users.unlink()
    inter = datasets / "ml-100k" / "ml-100k.inter"
    inter.write_text("".join(inter.read_text().splitlines(keepends=True)[:1000]))
    with pytest.raises(FetchError, match=r"holds RecBole's ml-100k files but not ml-100k\.user"):
        resolve_source("ml-100k")
    # Another layout: the hash recorded on first use, and a later change refused.
    grouplens = datasets / "ml-1m"
    grouplens.mkdir()
    (grouplens / "ratings.dat").write_text("1::1193::5::978300760\n")
    first = resolve_source("ml-1m")
    assert resolve_source("ml-1m").sha256 == first.sha256
    (grouplens / "ratings.dat").write_text("1::1193::4::978300760\n")
    with pytest.raises(FetchError, match=r"recorded on first use \(key 'local:ml-1m'"):
        resolve_source("ml-1m")
