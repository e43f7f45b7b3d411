"""The one place that sets up and tears down torch.distributed.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) it joins the process group: nccl when CUDA is
available, gloo otherwise. The device is ``cuda:LOCAL_RANK``: LOCAL_RANK, not RANK, so multi-node
jobs pick the right GPU on every node. Without torchrun it runs as a single process with no
process group at all, so every entry point also works as a plain ``python`` command.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def gather_to_main(self, obj):
        """Gather one picklable object per rank; rank 0 gets the list, others get None."""
        if not dist.is_initialized():
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def _device_for(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(timeout_minutes: float = 120.0) -> Iterator[DistInfo]:
    """Join the torchrun process group for the duration of the block (or run single-process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(local_rank)
    started = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        started = True
    try:
        yield DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
