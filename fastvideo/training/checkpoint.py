"""Sharded checkpoints (torch.distributed.checkpoint) with exact and elastic resume.

Layout under ``OUTPUT_DIR/checkpoints/``::

    step-00000040/         DCP shards of model, optimizer and EMA (+ .metadata); trainer_state.pt (step,
                           lr scheduler, data position in global samples: the same on every rank);
                           rank<r>.pt (each rank's RNG states); COMPLETE (step, world size, run fingerprint)
    latest                 the name of the newest complete checkpoint (for people; resume scans the folders)

A checkpoint is written under ``step-N.tmp`` and renamed only once every rank has finished, so a
run killed mid-save leaves no folder that looks complete; a save killed between its two renames
(``fastvideo.io.replace_dir``) is finished by the next resume. Rank 0 alone chooses the checkpoint
to resume from and tells the others, so ranks on a lagging shared filesystem cannot disagree.

Resume may use another process count (elastic): DCP reshards the model, optimizer and EMA, and the
data position is kept in global samples, so any layout with the same global batch continues the
same sample order and noise. RNG states are restored only on the same layout (the trainer's noise
comes from seeded generators, not from them). ``latest`` refuses a checkpoint whose run
fingerprint (model, data, hyperparameters) differs from this run's; naming the folder accepts it.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from fastvideo.io import atomic_torch_save, atomic_write_text, replace_dir
from fastvideo.parallel.process_group import DistInfo

COMPLETE = "COMPLETE"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
NAME = re.compile(r"step-(\d{8})")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> str | None:
    """None when ``path`` is a whole checkpoint, else what is wrong with it."""
    marker = path / COMPLETE
    if not marker.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "unreadable COMPLETE marker"
    missing = [f for f in (".metadata", TRAINER_STATE) if not (path / f).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    missing = [r for r in range(info.get("world_size", 0)) if not (path / f"rank{r}.pt").is_file()]
    return f"per-rank state missing for ranks {missing}" if missing else None


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two run fingerprints, as 'key: old -> new' lines."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def read_marker(path: Path) -> dict:
    return json.loads((path / COMPLETE).read_text())


def checkpoint_folders(root: Path) -> list[Path]:
    """Checkpoint folders by step, oldest first (names only; completeness not checked)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if NAME.fullmatch(p.name) and p.is_dir())


def choose_checkpoint(root: Path, spec: str, fingerprint: dict, *, repair: bool = True) -> Path | None:
    """The checkpoint ``spec`` names: a folder, or ``latest`` (None when there is none).

    ``latest`` skips incomplete folders with a warning and refuses one whose run fingerprint differs
    from ``fingerprint``; a named folder is taken with a note of the differences. ``repair`` first
    finishes saves that were killed between their two renames. Raises ValueError with the message.
    """
    if spec != LATEST:
        path = Path(spec)
        problem = is_complete(path) if path.is_dir() else "not a directory"
        if problem:
            raise ValueError(f"cannot resume from {path}: {problem}")
        changes = fingerprint_changes(read_marker(path).get("fingerprint", {}), fingerprint)
        if changes:
            print(f"resuming from {path}, named explicitly, although its run differs: {'; '.join(changes)}")
        return path
    if repair:
        finish_interrupted_saves(root)
    for path in reversed(checkpoint_folders(root)):
        problem = is_complete(path)
        if problem is not None:
            warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
            continue
        changes = fingerprint_changes(read_marker(path).get("fingerprint", {}), fingerprint)
        if changes:
            raise ValueError(
                f"the latest checkpoint {path} was written by a run with other settings ({'; '.join(changes)}); "
                f"use another OUTPUT_DIR, restore those settings, or pass --resume_from_checkpoint {path} to "
                "resume from it anyway"
            )
        return path
    return None


def finish_interrupted_saves(root: Path) -> None:
    """A save killed between renaming the old folder aside and the new one in left ``step-N.tmp`` whole."""
    for tmp in root.glob("step-*.tmp") if root.is_dir() else []:
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        if NAME.fullmatch(final.name) and not final.exists() and is_complete(tmp) is None:
            replace_dir(tmp, final)


class CheckpointManager:
    def __init__(
        self,
        output_dir: str | Path,
        dist_info: DistInfo,
        keep_last: int | None = None,
        fingerprint: dict | None = None,
    ):
        self.root = Path(output_dir) / "checkpoints"
        self.dist = dist_info
        self.keep_last = keep_last
        self.fingerprint = fingerprint or {}

    # --- saving ----------------------------------------------------------------------------------
    def save(self, step: int, app_state: dict, trainer_state: dict, rank_state: dict) -> Path:
        final = self.root / checkpoint_name(step)
        tmp = self.root / f"{final.name}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        dcp.save(app_state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
        atomic_torch_save(rank_state, tmp / f"rank{self.dist.rank}.pt")
        if self.dist.is_main:
            atomic_torch_save(trainer_state, tmp / TRAINER_STATE)
        self.dist.barrier()
        if self.dist.is_main:
            marker = {"step": step, "world_size": self.dist.world_size, "fingerprint": self.fingerprint}
            atomic_write_text(json.dumps(marker, indent=1), tmp / COMPLETE)
            replace_dir(tmp, final)
            atomic_write_text(final.name, self.root / LATEST)
            self._prune()
        self.dist.barrier()
        return final

    def _prune(self) -> None:
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last:
            for old in checkpoint_folders(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)

    # --- choosing one to resume from ---------------------------------------------------------------
    def find(self, spec: str) -> Path | None:
        """Rank 0 chooses (``choose_checkpoint``) and every rank gets its choice.

        Returns None when ``latest`` finds no complete checkpoint; raises ValueError (on every rank)
        when the choice cannot be resumed from.
        """
        choice = None
        if self.dist.is_main:
            try:
                path = choose_checkpoint(self.root, spec, self.fingerprint)
                choice = ("ok", None if path is None else str(path))
            except ValueError as err:
                choice = ("error", str(err))
        kind, value = self.dist.broadcast_from_main(choice)
        if kind == "error":
            raise ValueError(value)
        return None if value is None else Path(value)

    # --- loading ---------------------------------------------------------------------------------
    def load(self, path: Path, app_state: dict) -> tuple[dict, dict | None]:
        """Load the sharded state in place; return (trainer state, this rank's RNG state or None).

        The RNG state is None when the checkpoint was written by another number of processes.
        """
        dcp.load(app_state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        trainer_state = torch.load(path / TRAINER_STATE, weights_only=False)
        same_layout = read_marker(path)["world_size"] == self.dist.world_size
        rank_state = (
            torch.load(path / f"rank{self.dist.rank}.pt", weights_only=False) if same_layout else None
        )
        return trainer_state, rank_state


def rng_state() -> dict:
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
