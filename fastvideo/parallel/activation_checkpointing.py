"""Selective activation checkpointing of a DiT's transformer blocks, and the memory figures behind it.

Activation checkpointing (recompute in backward), not to be confused with training checkpoints
(``fastvideo.training.checkpoint``). A policy decides which of the model's repeated blocks
recompute their activations in backward instead of keeping them from forward. The blocks are the
``nn.ModuleList`` attributes named by ``blocks_attrs`` (the adapter's ``block_lists``: Mochi's
``transformer_blocks``, Wan's ``blocks``; several lists are indexed one after the other).
``apply(model)`` wraps the chosen blocks in place with torch's non-reentrant ``checkpoint_wrapper``
and returns their indices::

    policy = resolve_policy("0.5")                  # or "none", "all", "4", "auto"
    wrapped = policy.apply(model)                   # e.g. [0, 2] of 4 blocks
    # then (optionally) torch.compile, then fully_shard per block and at the root

    AutoCheckpointing(budget_bytes=40 * 2**30, probe=lambda: model(**example_batch)).apply(model)

Whole blocks are wrapped, so recomputation reruns a block's full forward, including any forward
hooks and attention processors installed on it or inside it (sequence parallelism). Parameter
names in ``model.state_dict()`` stay as they were (the wrapper's state-dict hooks strip its
``_checkpoint_wrapped_module.`` prefix), so checkpoints and diffusers exports do not change;
``named_parameters()`` of the root does include the prefix.

Choosing blocks: ``SelectiveCheckpointing`` spreads ``k`` of ``n`` blocks evenly over the depth by
taking index ``i * n // k`` for ``i = 0 .. k-1`` (2 of 8 -> [0, 4], 3 of 8 -> [0, 2, 5]).
``AutoCheckpointing`` measures what one probe forward saves for backward, block by block (see
:func:`profile_activations`), and wraps the fewest blocks whose predicted activation memory fits
the budget. The prediction counts every storage once: what ops outside the blocks save, what
unwrapped blocks save, and the inputs of wrapped blocks (a checkpointed block keeps them alive to
recompute from). It covers what is held between forward and backward; recomputing a wrapped block
in backward briefly adds that one block's activations on top.

:func:`saved_tensor_bytes` measures the bytes autograd saves while running a function, for tests
and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)

DEFAULT_BLOCKS_ATTRS = ("transformer_blocks",)


class CheckpointPolicy(Protocol):
    def apply(self, model: nn.Module) -> list[int]:
        """Wrap the chosen blocks of ``model`` in place; return their indices (ascending)."""
        ...


# --- measuring saved tensors ----------------------------------------------------------------------


def _is_parameter_storage(t: torch.Tensor) -> bool:
    # Weights (and views of them, e.g. ``weight.t()`` saved by a linear) live in memory whether or
    # not anything is checkpointed; under FSDP they are re-gathered for backward anyway.
    return isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)


def _storage_key(t: torch.Tensor) -> tuple[int, int, torch.UntypedStorage]:
    """Identity and size of ``t``'s storage: views of one storage share a key (works on meta too)."""
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes(), storage


class _SavedTensorLedger:
    """Records every storage autograd saves for backward while active, tagged with a region.

    The region is ``None`` outside the blocks and a block index inside one (set by the hooks of
    :func:`profile_activations`). Storages are kept referenced until the ledger is dropped, so a
    freed storage's address cannot be reused by a later one and be miscounted as the same.
    """

    def __init__(self, num_regions: int = 0) -> None:
        self.region: int | None = None
        self.sizes: dict[int, int] = {}
        self.outside: set[int] = set()
        self.inside: list[set[int]] = [set() for _ in range(num_regions)]
        self._alive: dict[int, torch.UntypedStorage] = {}

    def note(self, t: torch.Tensor) -> int | None:
        """Register ``t``'s storage (unless it is a parameter's); return its key."""
        if _is_parameter_storage(t):
            return None
        key, nbytes, storage = _storage_key(t)
        self.sizes[key] = nbytes
        self._alive[key] = storage
        return key

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = self.note(t)
        if key is not None:
            (self.outside if self.region is None else self.inside[self.region]).add(key)
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def total(self) -> int:
        keys = set(self.outside).union(*self.inside)
        return sum(self.sizes[k] for k in keys)

    @contextmanager
    def recording(self) -> Iterator[_SavedTensorLedger]:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn`` (with grad enabled).

    Each storage is counted once however many views of it are saved; parameters and views of them
    are not counted (they are not activations). A checkpointed region saves only its positional
    tensor inputs; what it keeps alive by reference (keyword inputs) is invisible to autograd and
    not counted here, while :meth:`ActivationProfile.predict` does include it.
    """
    ledger = _SavedTensorLedger()
    with ledger.recording():
        result = fn()
    total = ledger.total()
    del result  # held until now so that the graph (and so every saved tensor) was alive while counting
    return total


# --- per-block activation profile -----------------------------------------------------------------


@dataclass(frozen=True)
class ActivationProfile:
    """What one probe forward saved for backward, storage by storage, split by block.

    ``sizes`` maps a storage key to its bytes; ``outside`` holds the storages saved by ops outside
    every block, ``inside[i]`` those saved while block ``i`` ran, and ``inputs[i]`` the storages of
    block ``i``'s tensor inputs. A storage may appear in several sets; it is counted once.
    """

    sizes: dict[int, int]
    outside: frozenset[int]
    inside: tuple[frozenset[int], ...]
    inputs: tuple[frozenset[int], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.inside)

    def predict(self, wrapped: Iterable[int]) -> int:
        """Activation bytes held between forward and backward when the ``wrapped`` blocks are checkpointed."""
        wrapped = set(wrapped)
        held = set(self.outside)
        for i in range(self.num_blocks):
            # A wrapped block keeps only its inputs (to recompute from); an unwrapped one what it saved.
            held |= self.inputs[i] if i in wrapped else self.inside[i]
        return sum(self.sizes[k] for k in held)


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Tensors in a block call's arguments, looking inside tuples, lists and dicts (e.g. RoPE tables)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item)


def _inner(block: nn.Module) -> nn.Module:
    return block._checkpoint_wrapped_module if isinstance(block, CheckpointWrapper) else block


class _Blocks:
    """The repeated blocks of one or more ``nn.ModuleList`` attributes, indexed as one sequence."""

    def __init__(self, model: nn.Module, attrs: tuple[str, ...] | str):
        attrs = (attrs,) if isinstance(attrs, str) else tuple(attrs)
        self.slots: list[tuple[nn.ModuleList, int]] = []
        for attr in attrs:
            blocks = getattr(model, attr, None)
            if not isinstance(blocks, nn.ModuleList):
                raise ValueError(
                    f"{type(model).__name__}.{attr} is not an nn.ModuleList of transformer blocks"
                )
            self.slots += [(blocks, i) for i in range(len(blocks))]

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> nn.Module:
        blocks, i = self.slots[index]
        return blocks[i]

    def __setitem__(self, index: int, block: nn.Module) -> None:
        blocks, i = self.slots[index]
        blocks[i] = block

    def __iter__(self) -> Iterator[nn.Module]:
        return (blocks[i] for blocks, i in self.slots)


@contextmanager
def _unwrapped(blocks: _Blocks) -> Iterator[None]:
    """Temporarily put the bare blocks back, so that a probe sees what each block itself saves."""
    originals = list(blocks)
    for i, block in enumerate(originals):
        blocks[i] = _inner(block)
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def _get_blocks(model: nn.Module, blocks_attrs: tuple[str, ...] | str) -> _Blocks:
    return _Blocks(model, blocks_attrs)


def _reject_builtin_checkpointing(model: nn.Module) -> None:
    # diffusers' own flag checkpoints every block inside the model's forward: combined with the
    # wrappers, blocks would be recomputed twice, and a probe would see nothing inside the blocks.
    if getattr(model, "gradient_checkpointing", False):
        raise ValueError(
            "the model has diffusers' gradient checkpointing enabled; disable it "
            "(model.disable_gradient_checkpointing()) and let the checkpointing policy choose blocks"
        )


def profile_activations(
    model: nn.Module, forward_fn: Callable[[], Any], *, blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS
) -> ActivationProfile:
    """Run ``forward_fn`` once (grad enabled, no backward) and record what each block saves.

    ``forward_fn`` should run ``model`` on inputs of the real training shape and dtype (it may return
    the output, which is dropped). Already-wrapped blocks are measured bare.
    """
    _reject_builtin_checkpointing(model)
    blocks = _get_blocks(model, blocks_attrs)
    ledger = _SavedTensorLedger(num_regions=len(blocks))
    inputs: list[set[int]] = [set() for _ in blocks]

    def enter(index: int):
        def hook(module, args, kwargs):
            # Registered first (prepend), so it sees the arguments as the caller passed them, before
            # hooks such as a sequence-parallel split: those are what a wrapper would keep alive.
            keys = (ledger.note(t) for t in _tensors_in((args, kwargs)))
            inputs[index].update(k for k in keys if k is not None)
            ledger.region = index

        return hook

    def leave(module, args, output):
        ledger.region = None

    with _unwrapped(blocks):
        handles = []
        try:
            for i, block in enumerate(blocks):
                handles.append(block.register_forward_pre_hook(enter(i), with_kwargs=True, prepend=True))
                handles.append(block.register_forward_hook(leave, always_call=True))
            with ledger.recording():
                result = forward_fn()
            del result
        finally:
            for handle in handles:
                handle.remove()
    return ActivationProfile(
        sizes=dict(ledger.sizes),
        outside=frozenset(ledger.outside),
        inside=tuple(frozenset(s) for s in ledger.inside),
        inputs=tuple(frozenset(s) for s in inputs),
    )


# --- choosing and wrapping blocks -----------------------------------------------------------------


def spread_indices(depth: int, count: int) -> list[int]:
    """``count`` of ``depth`` block indices spread evenly: ``i * depth // count`` for ``i < count``."""
    if not 0 <= count <= depth:
        raise ValueError(f"cannot choose {count} of {depth} blocks")
    return [i * depth // count for i in range(count)]


def blocks_for_fraction(depth: int, fraction: float) -> int:
    """How many blocks ``fraction`` of ``depth`` is: the nearest count (halves round up), at least 1 if > 0."""
    count = math.floor(fraction * depth + 0.5)
    # Asking for any checkpointing at all should get some, even on a shallow model.
    return max(count, 1) if fraction > 0 and depth > 0 else count


def wrap_blocks(
    model: nn.Module, indices: Iterable[int], *, blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS
) -> list[int]:
    """Wrap block ``i`` of ``blocks_attrs`` for each index with a non-reentrant checkpoint wrapper, in place.

    Idempotent: blocks already wrapped are left alone. A model whose wrapped blocks differ from
    ``indices`` is rejected rather than half-changed (policies never unwrap blocks).
    """
    blocks = _get_blocks(model, blocks_attrs)
    chosen = sorted(set(indices))
    if chosen and not 0 <= chosen[0] <= chosen[-1] < len(blocks):
        raise ValueError(f"block indices {chosen} out of range for {len(blocks)} blocks")
    already = [i for i, block in enumerate(blocks) if isinstance(block, CheckpointWrapper)]
    if already and already != chosen:
        raise ValueError(
            f"blocks {already} are already checkpointed, but this policy chose {chosen}; "
            "apply a checkpointing policy once, to a model built without one"
        )
    if chosen:
        _reject_builtin_checkpointing(model)
    for i in chosen:
        if not isinstance(blocks[i], CheckpointWrapper):
            blocks[i] = checkpoint_wrapper(blocks[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return chosen


@dataclass
class NoCheckpointing:
    """Keep every activation: nothing is recomputed."""

    blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS

    def apply(self, model: nn.Module) -> list[int]:
        return wrap_blocks(model, [], blocks_attrs=self.blocks_attrs)


@dataclass
class SelectiveCheckpointing:
    """Checkpoint ``num_blocks`` blocks, or ``fraction`` of them (exactly one given), spread evenly."""

    num_blocks: int | None = None
    fraction: float | None = None
    blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS

    def __post_init__(self) -> None:
        if (self.num_blocks is None) == (self.fraction is None):
            raise ValueError("SelectiveCheckpointing needs exactly one of num_blocks and fraction")
        if self.num_blocks is not None and self.num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {self.num_blocks}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")

    def choose(self, depth: int) -> list[int]:
        if self.num_blocks is not None and self.num_blocks > depth:
            raise ValueError(f"num_blocks={self.num_blocks}, but the model has only {depth} blocks")
        count = self.num_blocks if self.num_blocks is not None else blocks_for_fraction(depth, self.fraction)
        return spread_indices(depth, count)

    def apply(self, model: nn.Module) -> list[int]:
        depth = len(_get_blocks(model, self.blocks_attrs))
        return wrap_blocks(model, self.choose(depth), blocks_attrs=self.blocks_attrs)


def _candidate(savings: list[int], count: int) -> list[int]:
    """The ``count`` blocks that save the most on their own; ties go to the evenly spread choice."""
    preferred = set(spread_indices(len(savings), count))
    order = sorted(range(len(savings)), key=lambda i: (-savings[i], i not in preferred, i))
    return sorted(order[:count])


def choose_blocks_for_budget(profile: ActivationProfile, budget_bytes: int) -> list[int]:
    """The fewest blocks to checkpoint so that ``profile.predict(blocks) <= budget_bytes``.

    For each count k = 0, 1, ... the candidate is the k blocks whose checkpointing alone saves the
    most (for identical blocks: the evenly spread k); the first candidate that fits is returned.
    Raises ``ValueError`` naming the smallest budget that would fit when none does.
    """
    none = profile.predict([])
    savings = [none - profile.predict([i]) for i in range(profile.num_blocks)]
    smallest = none
    for count in range(profile.num_blocks + 1):
        chosen = _candidate(savings, count)
        predicted = profile.predict(chosen)
        if predicted <= budget_bytes:
            return chosen
        smallest = min(smallest, predicted)
    raise ValueError(
        f"activation budget of {budget_bytes} bytes is too small even with all {profile.num_blocks} blocks "
        f"checkpointed: the smallest budget that fits is {smallest} bytes ({smallest / 2**30:.3f} GiB)"
    )


@dataclass
class AutoCheckpointing:
    """Checkpoint the fewest blocks whose predicted activation memory fits ``budget_bytes``.

    Give ``probe`` (a zero-argument function running the model forward on the real input shape; it
    is run once, by ``apply``, to build the profile) or a ready ``profile``. After ``apply``,
    ``profile`` holds the measurement and ``predicted_bytes`` the prediction for the chosen blocks.
    """

    budget_bytes: int
    probe: Callable[[], Any] | None = None
    profile: ActivationProfile | None = None
    blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS
    predicted_bytes: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {self.budget_bytes}")
        if (self.probe is None) == (self.profile is None):
            raise ValueError("AutoCheckpointing needs exactly one of probe and profile")

    def apply(self, model: nn.Module) -> list[int]:
        if self.profile is None:
            self.profile = profile_activations(model, self.probe, blocks_attrs=self.blocks_attrs)
        depth = len(_get_blocks(model, self.blocks_attrs))
        if self.profile.num_blocks != depth:
            raise ValueError(f"the profile covers {self.profile.num_blocks} blocks, the model has {depth}")
        chosen = choose_blocks_for_budget(self.profile, self.budget_bytes)
        self.predicted_bytes = self.profile.predict(chosen)
        return wrap_blocks(model, chosen, blocks_attrs=self.blocks_attrs)


def resolve_policy(
    spec: str,
    *,
    budget_bytes: int | None = None,
    example_forward: Callable[[], Any] | None = None,
    profile: ActivationProfile | None = None,
    blocks_attrs: tuple[str, ...] = DEFAULT_BLOCKS_ATTRS,
) -> CheckpointPolicy:
    """Parse a CLI value: ``none``, ``all``, a block count (``4``), a fraction (``0.5``) or ``auto``.

    A count is written without a decimal point and a fraction with one (``1`` is one block, ``1.0``
    all of them). ``auto`` needs ``budget_bytes`` and ``example_forward`` (the probe forward);
    other specs ignore both. A precomputed ``profile`` (e.g. from ``extrapolate_profile``) can stand
    in for the probe.
    """
    text = spec.strip().lower()
    if text == "none":
        return NoCheckpointing(blocks_attrs=blocks_attrs)
    if text == "all":
        return SelectiveCheckpointing(fraction=1.0, blocks_attrs=blocks_attrs)
    if text == "auto":
        if budget_bytes is None or (example_forward is None and profile is None):
            raise ValueError(
                "activation checkpointing 'auto' needs a memory budget and an example forward or profile"
            )
        if profile is not None:
            return AutoCheckpointing(budget_bytes, profile=profile, blocks_attrs=blocks_attrs)
        return AutoCheckpointing(budget_bytes, probe=example_forward, blocks_attrs=blocks_attrs)
    if text.isdigit():
        return SelectiveCheckpointing(num_blocks=int(text), blocks_attrs=blocks_attrs)
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:  # also rejects nan and inf
        raise ValueError(
            f"activation checkpointing {spec!r} not understood: use none, all, auto, a block count "
            "such as 4, or a fraction in [0, 1] such as 0.5"
        )
    return SelectiveCheckpointing(fraction=fraction, blocks_attrs=blocks_attrs)


def extrapolate_profile(probe: ActivationProfile, depth: int) -> ActivationProfile:
    """A ``depth``-block profile from a probe of a shallower copy of the model (>= 2 blocks).

    The probe's first block stands for every block but the last, and its last block for the last
    (a family's final block can differ, e.g. Mochi's drops the text stream). Storages shared
    between blocks are counted per block, so the estimate errs high, never low: the trainer probes
    a 2-block copy on the real device and shape, then plans for all blocks without ever building
    the full-depth model unsharded.
    """
    if probe.num_blocks < 2:
        raise ValueError("extrapolate_profile needs a probe of at least 2 blocks")

    def total(keys) -> int:
        return sum(probe.sizes[k] for k in keys if k not in probe.outside)

    block_inside = [total(probe.inside[0])] * (depth - 1) + [total(probe.inside[-1])]
    block_inputs = max(total(keys) for keys in probe.inputs)
    sizes = {0: sum(probe.sizes[k] for k in probe.outside)}
    for i in range(depth):
        sizes[1 + 2 * i], sizes[2 + 2 * i] = block_inside[i], block_inputs
    return ActivationProfile(
        sizes=sizes,
        outside=frozenset({0}),
        inside=tuple(frozenset({1 + 2 * i}) for i in range(depth)),
        inputs=tuple(frozenset({2 + 2 * i}) for i in range(depth)),
    )
