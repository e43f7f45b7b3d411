"""FSDP2 for a plain diffusers DiT: ``fully_shard`` per block, then at the root.

    apply_fsdp(model, blocks, mesh=dims.fsdp_mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

A 2-D mesh (replicate x shard) gives HSDP. Parameters keep ``model``'s dtype as master weights
(fp32 by default); ``param_dtype`` is what forward/backward compute in, and gradients are reduced
in ``reduce_dtype``. ``cpu_offload`` keeps sharded parameters, gradients and optimizer state in
host memory (also over one process, the trainer's answer to ``--cpu_offload`` on one GPU). Nothing
here knows about any model family: the adapter says what the blocks are.
"""

from __future__ import annotations

import warnings

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard


def apply_fsdp(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    *,
    mesh: DeviceMesh,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    cpu_offload: bool = False,
) -> torch.nn.Module:
    # Mochi's blocks return views; nothing downstream modifies them in place, and
    # tests/test_train.py checks that FSDP gradients equal the single-process ones.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    kwargs = {"mesh": mesh, "mp_policy": mp}
    if cpu_offload:
        # Pinned host memory speeds up copies to the GPU; there is nothing to pin for on a CPU mesh.
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda")
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again right away by backward: don't reshard them.
        fully_shard(block, reshard_after_forward=i < last, **kwargs)
    fully_shard(model, **kwargs)
    return model
