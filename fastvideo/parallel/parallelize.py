"""One step that turns a plain diffusers DiT into the layout a run asked for, for any family.

    wrapped = parallelize(model, adapter, dims, attention_backend="sdpa", ac_policy=policy,
                          compile=False, fsdp=True, param_dtype=torch.bfloat16)

Always in this order, on the model built on the meta device (before ``to_empty`` and loading):

1. the family's SP plan and attention kernel (``adapter.set_attention``: split/gather hooks and
   Ulysses processors when the SP mesh has more than one rank);
2. activation checkpointing of the blocks the policy chooses (``fastvideo.parallel.activation_checkpointing``);
3. ``torch.compile`` per block (``compile``);
4. FSDP2 per block, then at the root (``fsdp``; HSDP when the mesh is 2-D).

The blocks are the adapter's (``adapter.blocks``: every list in ``block_lists``), so nothing here
knows a family. Returns the indices of the checkpointed blocks.
"""

from __future__ import annotations

import torch

from fastvideo.parallel.dims import ParallelDims
from fastvideo.parallel.fsdp import apply_fsdp


def compile_blocks(blocks: list[torch.nn.Module], backend: str = "inductor") -> None:
    """torch.compile each block in place (parameter names do not change; like blocks share graphs).

    A checkpointed block is compiled inside its checkpoint wrapper: dynamo cannot trace a checkpoint
    around a graph break (diffusers' Mochi attention has one, a data-dependent ``nonzero``), and would
    run such a block eagerly. So the checkpoint stays eager and recomputes the compiled block.
    """
    for block in blocks:
        getattr(block, "_checkpoint_wrapped_module", block).compile(backend=backend)


def parallelize(
    model: torch.nn.Module,
    adapter,
    dims: ParallelDims,
    *,
    attention_backend: str = "sdpa",
    ac_policy=None,
    compile: bool = False,
    fsdp: bool = False,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    cpu_offload: bool = False,
) -> list[int]:
    """Apply SP -> activation checkpointing -> compile -> FSDP2 to ``model`` in place (see the module doc)."""
    sp_group = dims.sp_mesh.get_group() if dims.sp_enabled else None
    adapter.set_attention(model, sp_group, attention_backend)
    wrapped = ac_policy.apply(model) if ac_policy is not None else []
    blocks = adapter.blocks(model)  # after wrapping: the wrappers, which FSDP and compile must see
    if compile:
        compile_blocks(blocks)
    if fsdp:
        apply_fsdp(
            model, blocks, mesh=dims.fsdp_mesh, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
            cpu_offload=cpu_offload,
        )  # fmt: skip
    return wrapped
