"""Atomic writes: whole or nothing, and the permissions a plain open()/mkdir() would give."""

from __future__ import annotations

import os
import stat

import pytest

from fastvideo.io import atomic_dir, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_dir_replaces_whole_with_mkdir_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    (tmp_path / "plain").mkdir()
    target = tmp_path / "out"
    (target / "old").mkdir(parents=True)
    with atomic_dir(target) as staging:
        (staging / "a.txt").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert mode(target) == mode(tmp_path / "plain") == 0o777 & ~umask


def test_atomic_dir_and_file_leave_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("killed")
    atomic_write_text("kept", tmp_path / "f.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "kept"
