"""Atomic writes: whole or absent, the old file kept on failure, own temp names, modes."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import IO

import pytest

from movierec.files import write_atomic, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    write_json_atomic(path, {"epoch": 1})  # the folder is created
    assert json.loads(path.read_text()) == {"epoch": 1}

    def half_then_crash(handle: IO[bytes]) -> None:
        handle.write(b'{"epoch": 2, "wei')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_concurrent_writers_each_land_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "negatives.bin"
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    barrier = threading.Barrier(len(payloads))

    def writer(payload: bytes) -> None:
        barrier.wait()
        for _ in range(5):
            write_atomic(path, lambda handle: handle.write(payload))

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() in payloads  # one writer's whole content, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["negatives.bin"]


def test_mode_and_umask(tmp_path: Path) -> None:
    secret = write_text_atomic(tmp_path / "inventory.yml", "---\n", mode=0o600)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    old = os.umask(0o022)
    try:
        plain = write_text_atomic(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_json_options(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": Path("/x")}, indent=None,
                             sort_keys=True, default=str)
    assert path.read_text() == '{"a": "/x", "b": 1}\n'


def test_replace_folder_swaps_and_puts_the_old_one_back_when_the_swap_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from movierec.files import replace_folder

    dest, new = tmp_path / "data", tmp_path / ".data.tmp"
    for folder, text in ((dest, "old"), (new, "new")):
        folder.mkdir()
        (folder / "card.json").write_text(text)
    real = os.replace

    def fail_the_swap(src: object, dst: object) -> None:
        if Path(src) == new:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_the_swap)
    with pytest.raises(OSError, match="disk full"):
        replace_folder(new, dest)
    assert (dest / "card.json").read_text() == "old"  # the earlier version is back
    monkeypatch.setattr(os, "replace", real)
    replace_folder(new, dest)
    assert (dest / "card.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no backup left
