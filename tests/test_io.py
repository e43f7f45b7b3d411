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


def test_a_kill_while_the_old_folder_is_deleted_leaves_the_new_one_whole(tmp_path, monkeypatch):
    """Replacing a folder: the old one is renamed aside before the new one goes in, and deleted last.

    Deleting first (the old way) and being killed half-way left a half-deleted folder under the final
    name; here the 'kill' lands in the middle of that deletion.
    """
    import shutil

    import fastvideo.io

    target = tmp_path / "out"
    target.mkdir()
    for name in ("a", "b", "c"):
        (target / name).write_text("old")
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        files = sorted(p.path for p in os.scandir(path) if p.is_file()) if os.path.isdir(path) else []
        if files:  # delete one file, then die
            os.unlink(files[0])
            raise KeyboardInterrupt("killed")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(fastvideo.io.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        for name in ("a", "b", "c"):
            (staging / name).write_text("new")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "new", "b": "new", "c": "new"}


def test_a_kill_between_the_renames_leaves_the_old_folder_whole_beside(tmp_path, monkeypatch):
    import fastvideo.io

    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    real_replace, calls = os.replace, []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(fastvideo.io.os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        (staging / "a").write_text("new")
    assert not target.exists()  # never a partial folder under the final name
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.tmp-old-")]
    assert len(aside) == 1 and (aside[0] / "a").read_text() == "old"
