"""Exponential moving average of the trainable weights, sharded exactly like them.

    ema = EMA(model.named_parameters(), decay=0.999, start_step=0)  # or EMA(model, ...)
    ...
    optimizer.step(); step += 1
    ema.update(step)                       # shadow = decay * shadow + (1 - decay) * param
    with ema.swap_into(model):             # model holds the EMA weights inside the block
        validate(model)                    # ... and its own weights again after it
    state = ema.state_dict()               # {name: shadow tensor}; ema.load_state_dict(state)

Create the EMA after the model is sharded (``fully_shard``) and materialised: each shadow is an
fp32 copy of its parameter, so for an FSDP2 parameter (a DTensor) it is a DTensor with the same mesh
and placements, and ``state_dict()`` can go through ``torch.distributed.checkpoint`` beside the
model. ``update`` and the swap work on each rank's local shards only, so they never communicate.

Shadows are fp32 whatever the weights' dtype: with bf16 weights (``--master_weight_type bf16``, a
LoRA's bf16 base) a bf16 shadow would round away updates smaller than its precision, and with a
decay of 0.999 that is most of them. Swapping fp32 shadows into bf16 weights keeps a copy of the
weights to put back, so the shadows never pass through bf16.

Only parameters with ``requires_grad`` are tracked (frozen ones never change). Up to and including
``start_step`` the shadow just copies the weights; averaging starts with the step after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def named_trainable(
    params: torch.nn.Module | Iterable[torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]],
) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) pairs of the trainable parameters; unnamed ones are named by position."""
    if isinstance(params, torch.nn.Module):
        params = params.named_parameters()
    items = list(params)
    if items and not isinstance(items[0], tuple):
        items = [p for p in items if p.requires_grad]
        return [(str(i), p) for i, p in enumerate(items)]
    return [(name, p) for name, p in items if p.requires_grad]


class EMA:
    """Shadow weights updated by ``update(step)``; see the module docstring for the contract."""

    def __init__(
        self,
        params: torch.nn.Module | Iterable[torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]],
        decay: float = 0.999,
        start_step: int = 0,
    ):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1] (got {decay})")
        self.decay = decay
        self.start_step = start_step
        self.params: dict[str, torch.nn.Parameter] = dict(named_trainable(params))
        if not self.params:
            raise ValueError("EMA got no trainable parameters")
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                n: p.detach().to(torch.float32, copy=True) for n, p in self.params.items()
            }
        self._swapped = False
        self._backup: list[torch.Tensor] | None = None

    # --- updating --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in; call once per optimizer step with the new step count."""
        self._refuse_while_swapped("update")
        shadows, weights = self._local_pairs(self.params)
        weights = [w.float() for w in weights]  # no copy for fp32 weights
        if step <= self.start_step:
            torch._foreach_copy_(shadows, weights)
        else:
            # lerp: shadow + (1 - decay) * (param - shadow), in place on the local shards.
            torch._foreach_lerp_(shadows, weights, 1.0 - self.decay)

    def _local_pairs(
        self, params: Mapping[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shadows, weights = [], []
        for name, shadow in self.shadow.items():
            s, w = local(shadow), local(params[name].detach())
            if s.shape != w.shape:
                raise RuntimeError(
                    f"EMA shadow of {name} is {tuple(s.shape)} but the parameter is {tuple(w.shape)}: create "
                    "the EMA after fully_shard and materialisation, from the parameters being trained"
                )
            shadows.append(s)
            weights.append(w)
        return shadows, weights

    def _refuse_while_swapped(self, what: str) -> None:
        if self._swapped:
            raise RuntimeError(
                f"EMA.{what}() inside swap_into(): the shadow holds the model's own weights now"
            )

    # --- swapping weights into a model -----------------------------------------------------------
    def _targets(self, model: torch.nn.Module | None) -> dict[str, torch.Tensor]:
        if model is None:
            return self.params
        by_name = dict(model.named_parameters())
        if all(name in by_name for name in self.shadow):
            return {name: by_name[name] for name in self.shadow}
        # EMAs built from unnamed parameters: accept the model that owns exactly those objects.
        owned = {id(p) for p in model.parameters()}
        if all(id(p) in owned for p in self.params.values()):
            return self.params
        missing = [name for name in self.shadow if name not in by_name][:5]
        raise ValueError(f"the model has no parameters named {missing} (and maybe more) that this EMA tracks")

    @torch.no_grad()
    def _swap_in(self, targets: Mapping[str, torch.Tensor]) -> None:
        shadows, weights = self._local_pairs(targets)
        if all(s.dtype == w.dtype for s, w in zip(shadows, weights, strict=True)):
            _exchange(shadows, weights)
            return
        # Lower-precision weights: keep them to put back, so the fp32 shadows are never rounded.
        self._backup = [w.clone() for w in weights]
        torch._foreach_copy_(weights, shadows)

    @torch.no_grad()
    def _swap_out(self, targets: Mapping[str, torch.Tensor]) -> None:
        shadows, weights = self._local_pairs(targets)
        if self._backup is None:
            _exchange(shadows, weights)
            return
        torch._foreach_copy_(weights, self._backup)
        self._backup = None

    @contextlib.contextmanager
    def swap_into(self, model: torch.nn.Module | None = None) -> Iterator[torch.nn.Module | None]:
        """Within the block ``model`` (default: the tracked parameters) holds the EMA weights.

        The weights are exchanged in place with the shadow and exchanged back on exit (also on an
        exception), so the block must only read the weights (validation, export), not train them.
        FSDP2 modules in ``model`` are resharded on entry and exit (see ``reshard_fsdp``).
        """
        self._refuse_while_swapped("swap_into")
        targets = self._targets(model)
        reshard_fsdp(model)
        self._swap_in(targets)
        self._swapped = True
        try:
            yield model
        finally:
            reshard_fsdp(model)
            self._swap_out(targets)
            self._swapped = False

    apply_to = swap_into
    swapped_into = swap_into

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """{parameter name: shadow}; the live tensors, so DCP can load into them in place."""
        self._refuse_while_swapped("state_dict")
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> None:
        """Copy saved shadows in: name-keyed (as saved) or a list in tracking order."""
        self._refuse_while_swapped("load_state_dict")
        if not isinstance(state, Mapping):
            if len(state) != len(self.shadow):
                raise ValueError(f"EMA state has {len(state)} tensors; this EMA tracks {len(self.shadow)}")
            state = dict(zip(self.shadow, state, strict=True))
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, dst in self.shadow.items():
            copy_into(dst, state[name], name)


def _exchange(shadows: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    """Swap values pairwise through one parameter-sized temporary at a time (no full backup copy)."""
    for s, w in zip(shadows, weights, strict=True):
        tmp = w.clone()
        w.copy_(s)
        s.copy_(tmp)


def reshard_fsdp(model: torch.nn.Module | None) -> None:
    """Free the unsharded copies FSDP2 still holds, so the next forward gathers the shards afresh.

    FSDP2 keeps the root module's parameters unsharded after a forward (and, without grad, nothing
    reshards them later); a swap writes the shards only, so without this the root would keep
    computing with the weights from before the swap.
    """
    if model is None:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def copy_into(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    """dst <- src, where either may be a DTensor; a full tensor is sliced locally into a sharded dst."""
    if src is dst:
        return
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"EMA state for {name} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    if isinstance(dst, DTensor):
        if not isinstance(src, DTensor):
            # Every rank holds the full tensor: take this rank's slice without communication.
            src = distribute_tensor(src.to(dst.device), dst.device_mesh, dst.placements, src_data_rank=None)
        elif src.placements != dst.placements:
            src = src.redistribute(dst.device_mesh, dst.placements)
        local(dst).copy_(local(src))
    else:
        local(dst).copy_(src.full_tensor() if isinstance(src, DTensor) else src)
