"""Files that readers see whole or not at all: a temporary name, fsync, then a rename.

A crash mid-write leaves the previous file (or none), never half of one, and two
processes writing the same file at once (Ray's workers drawing the same evaluation
negatives) each write their own temporary file, so the last rename wins with a whole file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], object], *,
                 mode: int | None = None) -> Path:
    """Write ``path`` through ``write(handle)`` so that it appears complete or not at all.

    Args:
        path: The file to (re)place; its folder is created when missing.
        write: Writes the content to the binary handle it is given.
        mode: Permission bits set before the file appears (e.g. ``0o600`` for a file that
            names hosts or holds a secret); None keeps the umask's.

    Returns:
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    try:
        with tmp.open("xb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str, *, mode: int | None = None) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")), mode=mode)


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 2,
                      sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """:func:`write_atomic` of ``value`` as JSON (``json.dumps``' options) and a newline."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, default=default)
    return write_text_atomic(path, text + "\n")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a config), with one-line errors naming it.

    Args:
        path: The file.
        what: How the user gave it, for the messages (``"--config"``).

    Raises:
        ValueError: Missing, a folder, unreadable, not JSON, or not a JSON object.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path}: is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path}: cannot be read ({error})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path}: not valid JSON (line {error.lineno}, column "
                         f"{error.colno}: {error.msg}); it takes a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path}: holds a JSON {type(value).__name__}, not an object "
                         "of settings")
    return value


def replace_folder(new: Path, dest: Path) -> None:
    """Rename folder ``new`` to ``dest``; a previous ``dest`` is kept until that succeeded.

    POSIX cannot rename a folder over a non-empty one, so the previous folder steps aside
    first and is deleted only once ``new`` is in place; if that rename fails, it comes
    back. Between the two renames ``dest`` is briefly absent, never partial.
    """
    backup = None
    if dest.exists():
        backup = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, backup)
    try:
        os.replace(new, dest)
    except BaseException:
        if backup is not None:
            os.replace(backup, dest)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def replaceable_folder(out: Path, marker: str) -> bool:
    """Whether ``out`` may be replaced whole: absent, empty, or holding ``marker`` (ours).

    Writers that swap in a whole folder check it first, so that ``--out .`` or
    ``--out ~/datasets`` is refused instead of deleted.
    """
    return not out.exists() or (out.is_dir() and ((out / marker).is_file()
                                                  or not any(out.iterdir())))


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty sibling of ``out`` to fill; on success it replaces ``out`` whole.

    Readers never see a half-written folder: the previous one, the new one, or for a moment
    between two renames none (``replace_folder``). On an error the staged folder is removed
    and ``out`` is left as it was. Check ``replaceable_folder`` first: the previous ``out``
    is deleted.

    Raises:
        ValueError: ``out`` is the current directory (``.``) or a filesystem root, which
            cannot be swapped for another folder.
    """
    if not out.name or Path(os.path.abspath(out)) == Path.cwd():
        raise ValueError(f"{str(out)!r}: name the output folder (a new or empty one), not "
                         "the current directory or a root, which cannot be replaced whole")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    staged.mkdir()  # not mkdtemp: its mode 0700 would keep other users out of shared data
    try:
        yield staged
        replace_folder(staged, out)  # a failed swap puts the earlier version back
    finally:
        shutil.rmtree(staged, ignore_errors=True)
