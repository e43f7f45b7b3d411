"""Ulysses sequence parallelism (SP), model-agnostic: collectives, token sharding and hook plans.

An SP group of P ranks works on ONE sample. Every rank receives the same full inputs; the video
tokens are split along the token dim after patch embedding, attention swaps "local tokens, all heads"
for "all tokens, local heads" with an all-to-all, and the tokens are gathered back before the output
is unpatchified, so every rank ends with the same full output. Nothing here knows about a model
family; a family describes where to split and gather with an :class:`SPPlan`::

    plan = SPPlan(
        split_outputs=(SplitOutput("rope", dim=0),),                        # positional tables
        split_inputs=(SplitInput("blocks.0", arg="hidden_states", position=0, dim=1),),
        gather_outputs=(GatherOutput("proj_out", dim=1),),                  # before unpatchify
    )
    handle = apply_sp_plan(model, plan, sp_group)   # sp_group: ProcessGroup or 1-D DeviceMesh
    ...
    handle.remove()                                 # back to the plain model

and supplies an attention processor built from :func:`seq_to_heads` / :func:`heads_to_seq` /
:func:`all_gather_along`. Token counts that P does not divide are zero-padded at the end of the
sequence (:class:`SeqShard` says where the padding is); attention must drop the padding from its
keys/values, and the gather trims it away again.

Gradient convention (what the trainer must do)
----------------------------------------------
Parameters are replicated over the SP group. Every SP rank computes the loss from the full gathered
output (the same value on every rank) and calls ``backward()`` on it, with no extra loss scaling.
Then the exact single-process gradient of every parameter is the MEAN over the SP group::

    grad_exact = (1 / P) * sum_over_sp_ranks(param.grad)      # all-reduce(AVG) over the SP group

This is what FSDP2's ``fully_shard`` does by default when its mesh contains the SP ranks (it averages
over every rank of the mesh): with DP x SP ranks it averages over all of them, which equals the DP
mean of exact per-sample gradients. So: do not divide the loss by P and do not add an SP all-reduce
on top of FSDP's. A single rank's ``.grad`` is NOT the exact gradient; only the SP mean is. Why: the
final all-gather's backward is a reduce-scatter SUM of the P identical output gradients, so token- and
head-parallel activations carry P times their gradient, while work that every rank repeats in full
(timestep/text embeddings, the text stream, RoPE tables) receives on each rank only the part of its
gradient that flows from that rank's tokens and heads; summed over ranks both are P x exact.
:func:`local_chunk` follows the same rule (its backward scatters into zeros, no communication).

The cheaper loss :func:`sp_local_mse_loss` (each rank scores a disjoint 1/P of the output) obeys the
same convention: its per-rank values differ, their mean is the full MSE, and the SP-mean gradient is
exact.

Activation checkpointing: hooks and processors keep no state between forward calls. The one
per-forward record (the true token count, read by the final gather) lives on a stack pushed and
popped by hooks on the root module; anything that can be recomputed inside a checkpointed block
(token splits, attention) derives everything from its own arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.utils.hooks import RemovableHandle

SPGroup = ProcessGroup | DeviceMesh


# --- groups -----------------------------------------------------------------------------------------


def as_process_group(group: SPGroup) -> ProcessGroup:
    """The ProcessGroup behind ``group`` (a ProcessGroup, or a 1-D DeviceMesh such as ``dims.sp_mesh``)."""
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"the SP mesh must be 1-D, got a {group.ndim}-D mesh {group.mesh_dim_names}")
        return group.get_group()
    return group


def valid_sp_sizes(num_heads: int) -> list[int]:
    """SP sizes that split ``num_heads`` attention heads evenly (Ulysses gives each rank whole heads)."""
    return [d for d in range(1, num_heads + 1) if num_heads % d == 0]


def check_sp_heads(family: str, num_heads: int, world: int) -> None:
    """ValueError naming the valid SP sizes when ``world`` does not divide ``num_heads``."""
    if num_heads % world:
        raise ValueError(
            f"{family} has {num_heads} attention heads, not divisible by the SP size {world}; "
            f"valid SP sizes for this model: {valid_sp_sizes(num_heads)}"
        )


def group_size(group: SPGroup) -> int:
    return dist.get_world_size(as_process_group(group))


def group_rank(group: SPGroup) -> int:
    return dist.get_rank(as_process_group(group))


# --- raw collectives (no autograd) ------------------------------------------------------------------


def _check_divisible(x: torch.Tensor, dim: int, world: int, what: str) -> None:
    if x.shape[dim] % world:
        raise ValueError(f"{what}: size {x.shape[dim]} of dim {dim} is not divisible by the SP size {world}")


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: ProcessGroup) -> torch.Tensor:
    world = dist.get_world_size(group)
    if world == 1:
        return x
    _check_divisible(x, scatter_dim, world, "all_to_all")
    # Chunk j of the scatter dim goes to rank j; what arrives from rank i is chunk i of the gather dim.
    send = torch.stack(x.chunk(world, dim=scatter_dim))
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


# torch renamed the "into one flat tensor" collectives; use whichever this torch has (>= 2.4 supported).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _all_gather(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    world = dist.get_world_size(group)
    if world == 1:
        return x
    # Gathered rank-major along a new leading dim (flat along dim 0 for the backend), then moved to dim.
    recv = x.new_empty((world * x.shape[0], *x.shape[1:]))
    _all_gather_flat(recv, x.contiguous(), group=group)
    return torch.cat(recv.view(world, *x.shape).unbind(0), dim=dim)


def _reduce_scatter_sum(x: torch.Tensor, dim: int, group: ProcessGroup) -> torch.Tensor:
    world = dist.get_world_size(group)
    if world == 1:
        return x
    _check_divisible(x, dim, world, "reduce_scatter")
    chunks = x.chunk(world, dim=dim)
    send = torch.cat([c.contiguous().view(-1) for c in chunks])
    recv = x.new_empty(chunks[0].numel())
    _reduce_scatter_flat(recv, send, op=dist.ReduceOp.SUM, group=group)
    return recv.view(chunks[0].shape)


# --- autograd-aware collectives ---------------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim: int, gather_dim: int, group: ProcessGroup):
        ctx.dims = (scatter_dim, gather_dim)
        ctx.group = group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        # The inverse all-to-all routes every gradient element back to where its value came from.
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim: int, group: ProcessGroup):
        ctx.dim = dim
        ctx.group = group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        # Each rank holds a (partial) gradient of the whole gathered tensor: the local piece's
        # gradient is the sum of those partials over the group.
        return _reduce_scatter_sum(grad, ctx.dim, ctx.group), None, None


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: SPGroup) -> torch.Tensor:
    """Split ``scatter_dim`` over the group and concatenate ``gather_dim`` from it; backward is the inverse."""
    scatter_dim, gather_dim = scatter_dim % x.ndim, gather_dim % x.ndim
    return _AllToAll.apply(x, scatter_dim, gather_dim, as_process_group(group))


def seq_to_heads(x: torch.Tensor, group: SPGroup, seq_dim: int = 1, head_dim: int = 2) -> torch.Tensor:
    """[B, S/P, H, D] (local tokens, all heads) -> [B, S, H/P, D] (all tokens, this rank's heads)."""
    return all_to_all(x, scatter_dim=head_dim, gather_dim=seq_dim, group=group)


def heads_to_seq(x: torch.Tensor, group: SPGroup, seq_dim: int = 1, head_dim: int = 2) -> torch.Tensor:
    """[B, S, H/P, D] -> [B, S/P, H, D]: the inverse of :func:`seq_to_heads`."""
    return all_to_all(x, scatter_dim=seq_dim, gather_dim=head_dim, group=group)


def all_gather_along(x: torch.Tensor, dim: int, group: SPGroup) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` (rank order); backward is reduce-scatter (sum)."""
    return _AllGather.apply(x, dim % x.ndim, as_process_group(group))


def local_chunk(x: torch.Tensor, dim: int, group: SPGroup) -> torch.Tensor:
    """This rank's 1/P of ``x`` along ``dim`` (P must divide it).

    Backward scatters the gradient into zeros, without communication: under this module's gradient
    convention the sum over ranks of those zero-filled gradients is the gradient of the whole tensor.
    """
    world, rank = group_size(group), group_rank(group)
    _check_divisible(x, dim, world, "local_chunk")
    size = x.shape[dim] // world
    return x.narrow(dim, rank * size, size)


# --- padding and token shards -----------------------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, dim: int, multiple: int) -> tuple[torch.Tensor, int]:
    """Zero-pad ``dim`` at the end up to a multiple of ``multiple``; returns (padded, true length)."""
    length = x.shape[dim]
    missing = -length % multiple
    if missing == 0:
        return x, length
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim), length


def trim(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """The first ``length`` entries of ``dim`` (drops padding added by :func:`pad_to_multiple`)."""
    return x if x.shape[dim] == length else x.narrow(dim, 0, length)


@dataclass(frozen=True)
class SeqShard:
    """Where one rank's tokens sit in a sequence of ``full_len`` tokens split over ``world`` ranks.

    The sequence is zero-padded at the end to ``padded_len`` (a multiple of ``world``) and rank r
    holds padded positions ``[start, start + chunk_len)``. Plain ints, so it can ride along with
    activations through checkpointing and FSDP's input casting.
    """

    full_len: int
    world: int
    rank: int

    @classmethod
    def of(cls, full_len: int, group: SPGroup) -> SeqShard:
        return cls(full_len=full_len, world=group_size(group), rank=group_rank(group))

    @property
    def chunk_len(self) -> int:
        return -(-self.full_len // self.world)

    @property
    def padded_len(self) -> int:
        return self.chunk_len * self.world

    @property
    def start(self) -> int:
        return self.rank * self.chunk_len

    @property
    def num_pad(self) -> int:
        return self.padded_len - self.full_len

    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of the full (unpadded) ``x`` along ``dim``; backward fills zeros elsewhere."""
        if x.shape[dim] != self.full_len:
            raise ValueError(f"expected {self.full_len} tokens along dim {dim}, got {x.shape[dim]}")
        padded, _ = pad_to_multiple(x, dim, self.world)
        return padded.narrow(dim, self.start, self.chunk_len)

    def gather(self, x: torch.Tensor, dim: int, group: SPGroup) -> torch.Tensor:
        """Every rank's chunk concatenated along ``dim``, padding dropped (inverse of :meth:`split`)."""
        return trim(all_gather_along(x, dim, group), dim, self.full_len)


class ShardedRope(NamedTuple):
    """This rank's rows of a model's RoPE tables (cos, sin) plus where they sit in the (padded) global
    sequence: what an SP plan's ``SplitOutput(..., wrap=ShardedRope.from_split)`` hands to attention."""

    cos: torch.Tensor
    sin: torch.Tensor
    shard: SeqShard

    @classmethod
    def from_split(cls, local: tuple[torch.Tensor, torch.Tensor], shard: SeqShard) -> ShardedRope:
        cos, sin = local
        return cls(cos, sin, shard)


class UlyssesProcessor:
    """Base of the families' attention processors: an optional SP group and the kernel (sdpa or flash).

    Stateless per call, and a ProcessGroup cannot be copied: copies of the model (EMA, a distillation
    teacher) share the processor and run SP over the same group.
    """

    def __init__(self, sp_group: SPGroup | None, backend: str = "sdpa") -> None:
        self.group = as_process_group(sp_group) if sp_group is not None else None
        self.backend = backend

    def __deepcopy__(self, memo: dict) -> UlyssesProcessor:
        return self


# --- hook plans -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitInput:
    """Split one input of ``module`` along the token dim before it runs.

    ``arg`` is the keyword name, ``position`` the index used when the input is passed positionally
    (e.g. by gradient-checkpointing helpers).
    """

    module: str
    arg: str
    position: int
    dim: int


@dataclass(frozen=True)
class SplitOutput:
    """Split the output of ``module`` (a tensor, or every tensor of a tuple) along the token dim.

    ``wrap(local_output, shard)`` may repackage the split output, e.g. to hand the :class:`SeqShard`
    to an attention processor together with the tensors.
    """

    module: str
    dim: int
    wrap: Callable[[Any, SeqShard], Any] | None = None


@dataclass(frozen=True)
class GatherOutput:
    """All-gather the (tensor) output of ``module`` along the token dim and drop the padding."""

    module: str
    dim: int


@dataclass(frozen=True)
class SPPlan:
    """Which submodules (dotted names, as in ``named_modules``) split or gather tokens."""

    split_inputs: tuple[SplitInput, ...] = ()
    split_outputs: tuple[SplitOutput, ...] = ()
    gather_outputs: tuple[GatherOutput, ...] = ()


class _ForwardFrames:
    """Per-forward record of the true token count, so the final gather knows how much padding to drop.

    A frame is pushed when the root module starts and popped when it ends. Splits recomputed by
    activation checkpointing run during backward, outside any frame, and record nothing.
    """

    def __init__(self) -> None:
        self._stack: list[dict[str, int]] = []

    def push(self) -> None:
        self._stack.append({})

    def pop(self) -> None:
        if self._stack:
            self._stack.pop()

    def record(self, full_len: int, where: str) -> None:
        if not self._stack:
            return
        frame = self._stack[-1]
        seen = frame.setdefault("full_len", full_len)
        if seen != full_len:
            raise RuntimeError(
                f"sequence parallel: {where} has {full_len} tokens but an earlier split in this forward "
                f"had {seen}; every split of one plan must see the same token count"
            )

    def full_len(self, where: str) -> int:
        if not self._stack or "full_len" not in self._stack[-1]:
            raise RuntimeError(
                f"sequence parallel: {where} gathers tokens, but no split ran earlier in this forward of the "
                "root module (is it inside a checkpointed region that is being recomputed?)"
            )
        return self._stack[-1]["full_len"]


class SPHandle:
    """The hooks installed by :func:`apply_sp_plan`; ``remove()`` uninstalls them."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _split_input_hook(spec: SplitInput, group: ProcessGroup, frames: _ForwardFrames):
    def hook(module, args, kwargs):
        if spec.arg in kwargs:
            x = kwargs[spec.arg]
        elif len(args) > spec.position:
            x = args[spec.position]
        else:
            raise RuntimeError(f"sequence parallel: {spec.module} was called without its {spec.arg!r} input")
        frames.record(x.shape[spec.dim], spec.module)
        local = SeqShard.of(x.shape[spec.dim], group).split(x, spec.dim)
        if spec.arg in kwargs:
            return args, {**kwargs, spec.arg: local}
        return (*args[: spec.position], local, *args[spec.position + 1 :]), kwargs

    return hook


def _split_output_hook(spec: SplitOutput, group: ProcessGroup, frames: _ForwardFrames):
    def hook(module, args, output):
        tensors = [output] if isinstance(output, torch.Tensor) else [o for o in output if torch.is_tensor(o)]
        lengths = {t.shape[spec.dim] for t in tensors}
        if len(lengths) != 1:
            raise RuntimeError(
                f"sequence parallel: outputs of {spec.module} disagree on the token count: {lengths}"
            )
        shard = SeqShard.of(lengths.pop(), group)
        frames.record(shard.full_len, spec.module)
        if isinstance(output, torch.Tensor):
            local = shard.split(output, spec.dim)
        else:
            local = tuple(shard.split(o, spec.dim) if torch.is_tensor(o) else o for o in output)
        return spec.wrap(local, shard) if spec.wrap is not None else local

    return hook


def _gather_output_hook(spec: GatherOutput, group: ProcessGroup, frames: _ForwardFrames):
    def hook(module, args, output):
        full_len = frames.full_len(spec.module)
        return SeqShard.of(full_len, group).gather(output, spec.dim, group)

    return hook


def apply_sp_plan(model: torch.nn.Module, plan: SPPlan, sp_group: SPGroup) -> SPHandle:
    """Install ``plan``'s split/gather hooks on ``model``'s submodules; returns a handle to remove them.

    Hooks touch activations only (never parameters), so ``fully_shard`` and checkpoint wrappers may be
    applied to the same submodules before or after this call.
    """
    group = as_process_group(sp_group)
    frames = _ForwardFrames()

    # Plain closures, not bound methods: deepcopy (EMA, teacher copies) keeps functions as they are
    # but would copy a bound method's object, splitting the frames the other hooks read.
    def push_frame(module, args):
        frames.push()

    def pop_frame(module, args, output):
        frames.pop()

    handles = [
        model.register_forward_pre_hook(push_frame),
        model.register_forward_hook(pop_frame, always_call=True),
    ]
    for spec in plan.split_inputs:
        module = model.get_submodule(spec.module)
        handles.append(
            module.register_forward_pre_hook(_split_input_hook(spec, group, frames), with_kwargs=True)
        )
    for spec in plan.split_outputs:
        module = model.get_submodule(spec.module)
        handles.append(module.register_forward_hook(_split_output_hook(spec, group, frames)))
    for spec in plan.gather_outputs:
        module = model.get_submodule(spec.module)
        handles.append(module.register_forward_hook(_gather_output_hook(spec, group, frames)))
    return SPHandle(handles)


def enable_ulysses(
    model: torch.nn.Module,
    sp_group: SPGroup,
    plan: SPPlan,
    family: str,
    install_processors: Callable[[], None],
) -> SPHandle:
    """The steps every family's ``enable_<family>_sequence_parallel`` shares, for an SP size above 1:
    check the heads divide, refuse a second enabling, install the family's processors, then the plan."""
    check_sp_heads(family, model.config.num_attention_heads, group_size(sp_group))
    if getattr(model, "_fastvideo_sp_enabled", False):
        raise RuntimeError("sequence parallelism is already enabled on this transformer")
    install_processors()
    handle = apply_sp_plan(model, plan, sp_group)
    # A plain flag (not a tensor or module), so state_dict and FSDP never see it.
    model._fastvideo_sp_enabled = True
    return handle


# --- loss helpers -----------------------------------------------------------------------------------


def sp_local_slice(x: torch.Tensor, dim: int, group: SPGroup) -> torch.Tensor:
    """This rank's part of ``x`` along ``dim`` when split into P nearly equal parts (no padding)."""
    return x.tensor_split(group_size(group), dim=dim)[group_rank(group)]


def sp_local_mse_loss(pred: torch.Tensor, target: torch.Tensor, group: SPGroup) -> torch.Tensor:
    """MSE over a disjoint 1/P of the elements, scaled so the mean over SP ranks is the full MSE.

    Each rank backpropagates its own value; the SP mean of the gradients is then exact (the module's
    convention), while every rank only evaluates 1/P of the loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    world = group_size(group)
    diff = sp_local_slice(pred.flatten(), 0, group) - sp_local_slice(target.flatten(), 0, group)
    return diff.float().square().sum() * (world / pred.numel())
