"""Atomic file writes: every file fastvideo writes appears whole or not at all.

Each writer writes to a temporary file in the destination folder, flushes it to disk and
renames it over the destination (``os.replace`` is atomic on POSIX), so a process killed
mid-write leaves at most a ``*.tmp-*`` file behind, never a truncated output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TMP_MARK = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``path``; on success it replaces ``path`` whole (``replace_dir``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{path.name}{TMP_MARK}", dir=path.parent))
    # mkdtemp creates 0700 folders; give the result the permissions a plain mkdir() would.
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        yield staging
        replace_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename folder ``new`` to ``path``, replacing what is there without ever leaving a partial folder.

    An existing ``path`` is first renamed aside (``<name>.tmp-old-*``), then ``new`` is renamed in,
    and only then is the old folder deleted. A kill at any instant leaves ``path`` either the old
    folder whole, the new one whole, or (between the two renames) absent with both whole beside it;
    never a half-deleted folder under the final name. A symbolic link at ``path`` is just unlinked.
    """
    new, path = Path(new), Path(path)
    aside = None
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        aside = Path(tempfile.mkdtemp(prefix=f"{path.name}{TMP_MARK}old-", dir=path.parent))
        os.replace(path, aside)  # onto the empty folder mkdtemp made: atomic on POSIX
    os.replace(new, path)
    _fsync_dir(path.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", path)


def remove_stale_tmp_files(folder: str | os.PathLike) -> int:
    """Delete temporary files left by a killed writer under ``folder``; returns how many."""
    removed = 0
    for p in Path(folder).rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed
