"""The one place that sets up and tears down torch.distributed.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) it joins the process group: nccl when CUDA is
available, gloo otherwise. The device is ``cuda:LOCAL_RANK``: LOCAL_RANK, not RANK, so multi-node
jobs pick the right GPU on every node. Without torchrun it runs as a single process with no
process group at all, so every entry point also works as a plain ``python`` command.

torchrun starts each worker in a session of its own, so killing the launcher (even ``kill -9`` of
its process group) does not reach the workers. Under torchrun every worker therefore watches its
parent, the launcher's agent, and exits as soon as that is gone (``watch_launcher``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
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

    def broadcast_from_main(self, obj):
        """Rank 0's ``obj`` on every rank (picklable), so all ranks act on one decision."""
        if not dist.is_initialized():
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

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


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_launcher(interval_s: float = 0.5) -> threading.Thread:
    """Exit this process once its parent (torchrun's agent) has gone: a daemon thread polls getppid."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            threading.Event().wait(interval_s)
            if os.getppid() != parent:
                with contextlib.suppress(OSError):
                    print(
                        f"error: the launcher (pid {parent}) is gone; stopping this worker", file=sys.stderr
                    )
                os._exit(1)

    thread = threading.Thread(target=watch, name="watch-launcher", daemon=True)
    thread.start()
    return thread


def single_process_group(device: torch.device) -> None:
    """A process group of this one process (FSDP2 needs one even on a single GPU, e.g. to offload).

    It lives until the process exits (``distributed`` only destroys the group it started).
    """
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


@contextlib.contextmanager
def distributed(timeout_minutes: float = 120.0) -> Iterator[DistInfo]:
    """Join the torchrun process group for the duration of the block (or run single-process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(local_rank)
    if under_torchrun():
        watch_launcher()
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
