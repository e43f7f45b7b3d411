"""One live run per output folder: an exclusive lock held for the life of the run.

    with FolderLock("outputs/finetune"):       # raises FolderInUse naming the holder's pid and host
        train()

The lock is ``flock`` on ``<folder>/.fastvideo.lock``, which also records who holds it (pid,
host, start time, command). The kernel drops it when the holder exits, ``kill -9`` included, so a
lock is never stale. On a shared filesystem, Linux's NFS client maps ``flock`` to NFS byte-range
locks, so a run on another node is refused too (NFSv4, or NFSv3 with lockd).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".fastvideo.lock"


class FolderInUse(ValueError):
    """Another live process holds the folder; the message names it."""


def describe_holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text())
    except (OSError, ValueError):
        return "another process (it has not written its pid yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} (since {started}: {info.get('command', '?')})"


class FolderLock:
    """Exclusive, non-blocking lock on a folder (created if missing); release() or leave the block."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(
                f"{self.folder} is in use by a live run: {describe_holder(self.path)}; wait for it to end, "
                "stop it, or choose another OUTPUT_DIR"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_on_main(folder: str | os.PathLike, dist_info) -> FolderLock | None:
    """Rank 0 locks ``folder`` for the whole job; every rank raises FolderInUse if that failed.

    Returns the held lock on rank 0 (release it when the job ends), None on the other ranks.
    """
    lock, error = None, None
    if dist_info.is_main:
        try:
            lock = FolderLock(folder).acquire()
        except FolderInUse as err:
            error = str(err)
    error = dist_info.broadcast_from_main(error)
    if error:
        raise FolderInUse(error)
    return lock


def check_free(folder: str | os.PathLike) -> None:
    """Raise FolderInUse if a live run holds ``folder`` (takes and drops the lock at once)."""
    if Path(folder).is_dir():
        FolderLock(folder).acquire().release()
