"""Sharded checkpoints (torch.distributed.checkpoint) with exact resume, and diffusers export.

Layout under ``OUTPUT_DIR/checkpoints/``::

    step-00000040/         DCP shards of model, optimizer and EMA (+ .metadata), rank<r>.pt with each
                           rank's own state (lr scheduler, data position, RNG states, step), COMPLETE
    latest                 the name of the newest complete checkpoint

A checkpoint is written under ``step-N.tmp`` and renamed only once every rank has finished, so a
run killed mid-save leaves no directory that looks complete; ``find_checkpoint`` skips partial or
damaged ones with a warning. Only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from fastvideo.io import atomic_torch_save, atomic_write_text
from fastvideo.parallel.process_group import DistInfo

COMPLETE = "COMPLETE"
LATEST = "latest"


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
    if not (path / ".metadata").is_file():
        return "DCP .metadata missing"
    missing = [r for r in range(info.get("world_size", 0)) if not (path / f"rank{r}.pt").is_file()]
    return f"per-rank state missing for ranks {missing}" if missing else None


class CheckpointManager:
    def __init__(self, output_dir: str | Path, dist_info: DistInfo, keep_last: int | None = None):
        self.root = Path(output_dir) / "checkpoints"
        self.dist = dist_info
        self.keep_last = keep_last

    def save(self, step: int, app_state: dict, rank_state: dict) -> Path:
        final = self.root / checkpoint_name(step)
        tmp = self.root / f"{final.name}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        dcp.save(app_state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
        atomic_torch_save(rank_state, tmp / f"rank{self.dist.rank}.pt")
        self.dist.barrier()
        if self.dist.is_main:
            atomic_write_text(json.dumps({"step": step, "world_size": self.dist.world_size}), tmp / COMPLETE)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            atomic_write_text(final.name, self.root / LATEST)
            self._prune()
        self.dist.barrier()
        return final

    def _prune(self) -> None:
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if not self.keep_last:
            return
        complete = sorted(p for p in self.root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def find(self, spec: str) -> Path | None:
        """``latest`` (newest complete checkpoint, or None) or an explicit checkpoint path."""
        if spec != LATEST:
            path = Path(spec)
            problem = is_complete(path) if path.is_dir() else "not a directory"
            if problem:
                raise ValueError(f"cannot resume from {path}: {problem}")
            return path
        candidates = sorted((p for p in self.root.glob("step-*") if p.is_dir()), reverse=True)
        for path in candidates:
            problem = is_complete(path)
            if problem is None:
                return path
            if self.dist.is_main:
                warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
        return None

    def load(self, path: Path, app_state: dict) -> dict:
        info = json.loads((path / COMPLETE).read_text())
        if info["world_size"] != self.dist.world_size:
            raise ValueError(
                f"{path} was written by {info['world_size']} processes, this run has {self.dist.world_size}; "
                "resume with the same NUM_GPUS x nodes"
            )
        dcp.load(app_state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        return torch.load(path / f"rank{self.dist.rank}.pt", weights_only=False)


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


def all_ranks_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
