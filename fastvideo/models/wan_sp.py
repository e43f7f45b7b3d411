"""Ulysses sequence parallelism and the attention backend for diffusers' ``WanTransformer3DModel``,
without touching diffusers' code.

    from fastvideo.models.wan_sp import configure_wan_attention, enable_wan_sequence_parallel
    enable_wan_sequence_parallel(transformer, dims.sp_mesh, backend="sdpa")   # or a ProcessGroup
    configure_wan_attention(transformer, backend="flash")                     # no SP: flash-attn only
    out = transformer(latents, timestep, prompt_embeds, encoder_hidden_states_image=None,
                      return_dict=False)[0]

Every rank of the SP group must pass the same full inputs; every rank gets the same full output
[B, C, T, H, W], equal to the single-process output. Gradients follow the convention documented in
:mod:`fastvideo.parallel.sequence_parallel`: the exact gradient is the MEAN over the SP group of the
ranks' gradients (what FSDP2 does when its mesh contains the SP ranks), with no loss scaling.

What is installed (instance-level only: per-module hooks and ``attn.processor`` attributes), at the
places diffusers' own ``WanTransformer3DModel._cp_plan`` splits and gathers:

* ``rope``: its output, the (cos, sin) tables [1, N, 1, D] over the full grid, is split along N like
  the tokens, so every token keeps its global position, and is wrapped in :class:`ShardedRope`,
  which also carries the :class:`SeqShard` (true token count) down to attention.
* ``blocks.0``: its ``hidden_states`` input, [B, N, D] right after patch embedding, is split along N
  (zero-padded to a multiple of P). T, H and W need not be divisible by anything.
* every self-attention (``attn1``): :class:`WanUlyssesAttnProcessor` replaces ``WanAttnProcessor``.
* ``proj_out``: its output is all-gathered along N and the padding dropped, so Wan's own unpatchify
  sees the full sequence.

Cross-attention (``attn2``) needs no collective: each local video token attends to the full text
(and, for image-to-video, image) tokens, which every rank holds in full, so it is exact per token.
There diffusers' ``WanAttnProcessor`` stays for sdpa, and :class:`WanCrossAttnProcessor` (the same
math on :func:`fastvideo.models.attention.attend`) is installed for flash.

Without SP, :class:`WanUlyssesAttnProcessor` (no group, no hooks) runs Wan's self-attention on the
chosen kernel; with the sdpa kernel and no SP, diffusers' processors are left in place, so that case
is diffusers' code exactly. Per-token timesteps ([B, N], Wan 2.2 TI2V) are refused under SP.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttention

from fastvideo.models.attention import attend, check_kernel
from fastvideo.parallel.sequence_parallel import (
    GatherOutput,
    ShardedRope,
    SPGroup,
    SplitInput,
    SplitOutput,
    SPPlan,
    UlyssesProcessor,
    enable_ulysses,
    group_size,
    heads_to_seq,
    pad_to_multiple,
    seq_to_heads,
    trim,
)

# Text tokens in an image-to-video cross-attention context [image; text]. diffusers' WanAttnProcessor
# hardcodes the same number (UMT5's 512) to find where the image tokens end.
WAN_TEXT_TOKENS = 512


WAN_SP_PLAN = SPPlan(
    split_outputs=(SplitOutput("rope", dim=1, wrap=ShardedRope.from_split),),
    split_inputs=(SplitInput("blocks.0", arg="hidden_states", position=0, dim=1),),
    gather_outputs=(GatherOutput("proj_out", dim=1),),
)


# --- the math shared by both processors -------------------------------------------------------------


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (even, odd) channel pairs of x [B, N, H, D] by the tables [1, N, 1, D], as diffusers does:
    computed in the promoted dtype of x and the tables (fp32 or fp64), returned in x's dtype.

    Wan's tables repeat every angle for both channels of its pair, so one copy of each is enough.
    """
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


def _project_qkv(
    attn: WanAttention, hidden_states: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q from ``hidden_states``, K and V from ``context``, still [B, N, H * D]; honours fused projections."""
    if getattr(attn, "fused_projections", False):
        if not attn.is_cross_attention:
            return attn.to_qkv(hidden_states).chunk(3, dim=-1)
        key, value = attn.to_kv(context).chunk(2, dim=-1)
        return attn.to_q(hidden_states), key, value
    return attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)


def _project_image_kv(attn: WanAttention, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(attn, "fused_projections", False):
        key, value = attn.to_added_kv(image).chunk(2, dim=-1)
    else:
        key, value = attn.add_k_proj(image), attn.add_v_proj(image)
    return attn.norm_added_k(key), value


def _heads(attn: WanAttention, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(2, (attn.heads, -1))


def _normed_heads(attn: WanAttention, query, key, value) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, H * D] -> [B, N, H, D], Q and K RMS-normed first: Wan's norm spans all heads at once."""
    return _heads(attn, attn.norm_q(query)), _heads(attn, attn.norm_k(key)), _heads(attn, value)


def _attend_tokens_major(query, key, value, backend: str) -> torch.Tensor:
    """``attend`` on [B, N, H, D] tensors (Wan's layout); returns [B, N, H, D]."""
    out = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), backend)
    return out.transpose(1, 2)


def _self_qkv(attn: WanAttention, hidden_states: torch.Tensor, rope) -> torch.Tensor:
    """Q, K, V of the given tokens, all heads, RoPE applied: [3, B, N, H, D].

    Wan's RMSNorm runs over all heads at once (before the head split), so it must see every head:
    with SP it runs here, on local tokens, before the all-to-all.
    """
    query, key, value = _normed_heads(attn, *_project_qkv(attn, hidden_states, hidden_states))
    if rope is not None:
        cos, sin = rope[0], rope[1]
        query, key = _apply_rope(query, cos, sin), _apply_rope(key, cos, sin)
    return torch.stack([query, key, value])


def _output(attn: WanAttention, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Heads merged, ``like``'s dtype, then the output projection (and its dropout), as diffusers does."""
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(like)))


# --- processors -------------------------------------------------------------------------------------


class WanUlyssesAttnProcessor(UlyssesProcessor):
    """fastvideo's replacement for ``WanAttnProcessor`` in self-attention: Ulysses SP on any kernel.

    With an SP group it needs the plan's :class:`ShardedRope`. Local Q/K/V [B, N/P, H, D] (normed and
    rotated with this rank's table rows) -> all-to-all -> [B, N, H/P, D], padding dropped -> attention
    -> padded again -> inverse all-to-all -> [B, N/P, H, D] -> output projection. Without a group
    (``sp_group=None``) it is Wan's self-attention on the ``backend`` kernel.
    """

    def __init__(self, sp_group: SPGroup | None, backend: str = "sdpa") -> None:
        check_kernel(backend)
        super().__init__(sp_group, backend)

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: ShardedRope | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("WanUlyssesAttnProcessor is for Wan's unmasked self-attention (attn1) only")
        if self.group is None:
            query, key, value = _self_qkv(attn, hidden_states, rotary_emb)
            return _output(attn, _attend_tokens_major(query, key, value, self.backend), query)
        if not isinstance(rotary_emb, ShardedRope):
            raise RuntimeError(
                "WanUlyssesAttnProcessor needs the RoPE tables split by WAN_SP_PLAN; "
                "install it with enable_wan_sequence_parallel(), not by hand"
            )
        shard = rotary_emb.shard
        qkv = _self_qkv(attn, hidden_states, rotary_emb)
        # One all-to-all for Q, K and V; every rank then holds every (real) token for its heads, and
        # the padding is dropped because zero keys would still take a share of the softmax.
        query, key, value = trim(seq_to_heads(qkv, self.group, seq_dim=2, head_dim=3), 2, shard.full_len)
        out = _attend_tokens_major(query, key, value, self.backend)
        out, _ = pad_to_multiple(out, 1, shard.world)
        out = heads_to_seq(out, self.group, seq_dim=1, head_dim=2)
        return _output(attn, out, qkv)


class WanCrossAttnProcessor:
    """``WanAttnProcessor``'s cross-attention (``attn2``) on fastvideo's kernel choice.

    Video queries attend to the text tokens and, for image-to-video models (``added_kv_proj_dim``),
    separately to the image tokens that diffusers prepends to the text (the last
    :data:`WAN_TEXT_TOKENS` tokens are text); the two outputs are summed. Per token, so it is exact
    on an SP rank's local tokens without any collective.
    """

    def __init__(self, backend: str = "sdpa") -> None:
        check_kernel(backend)
        self.backend = backend

    def __deepcopy__(self, memo: dict) -> WanCrossAttnProcessor:
        return self  # stateless, shared by copies like WanUlyssesAttnProcessor

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or attention_mask is not None:
            raise RuntimeError("WanCrossAttnProcessor is for Wan's unmasked cross-attention (attn2) only")
        text, image = _split_context(attn, encoder_hidden_states)
        query, key, value = _normed_heads(attn, *_project_qkv(attn, hidden_states, text))
        out = _attend_tokens_major(query, key, value, self.backend)
        if image is not None and image.shape[1] > 0:
            # Zero image tokens would add nothing (sdpa returns zeros); flash-attn refuses empty keys.
            key_image, value_image = (_heads(attn, t) for t in _project_image_kv(attn, image))
            out = out + _attend_tokens_major(query, key_image, value_image, self.backend)
        return _output(attn, out, query)


def _split_context(attn: WanAttention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(text, image) tokens of a cross-attention context; image is None for text-only models."""
    if attn.add_k_proj is None:
        return context, None
    if context.shape[1] < WAN_TEXT_TOKENS:
        raise ValueError(
            f"image-to-video Wan expects [image tokens; {WAN_TEXT_TOKENS} text tokens] as its cross-attention "
            f"context, got only {context.shape[1]} tokens"
        )
    num_image = context.shape[1] - WAN_TEXT_TOKENS
    return context[:, num_image:], context[:, :num_image]


# --- installing -------------------------------------------------------------------------------------


def enable_wan_sequence_parallel(
    transformer: WanTransformer3DModel, sp_group: SPGroup, backend: str = "sdpa"
) -> None:
    """Make ``transformer`` run Ulysses SP over ``sp_group`` (a ProcessGroup or 1-D DeviceMesh).

    Only this instance changes (hooks + per-module processors). Call it once, on the plain model or
    after ``fully_shard`` / checkpoint wrappers, either works. An SP size of 1 only sets the kernel
    (:func:`configure_wan_attention`). Raises ValueError when the head count is not divisible by the
    SP size, RuntimeError when SP is already enabled.
    """
    check_kernel(backend)
    if group_size(sp_group) == 1:
        configure_wan_attention(transformer, backend)
        return

    def install() -> None:
        # Registered before the plan's hooks, so it refuses before any of them runs.
        transformer.register_forward_pre_hook(_refuse_per_token_timesteps, with_kwargs=True)
        _set_processors(transformer, WanUlyssesAttnProcessor(sp_group, backend), _cross_processor(backend))

    enable_ulysses(transformer, sp_group, WAN_SP_PLAN, "Wan", install)


def configure_wan_attention(transformer: WanTransformer3DModel, backend: str) -> None:
    """Without SP: diffusers' processors for sdpa, fastvideo's (group-less) processors for flash."""
    check_kernel(backend)
    if backend != "sdpa":
        _set_processors(transformer, WanUlyssesAttnProcessor(None, backend), WanCrossAttnProcessor(backend))


def _cross_processor(backend: str):
    """None (keep diffusers' processor, already exact per token) for sdpa, else fastvideo's."""
    return None if backend == "sdpa" else WanCrossAttnProcessor(backend)


def _set_processors(transformer: torch.nn.Module, self_attn, cross_attn) -> None:
    for module in transformer.modules():
        if not isinstance(module, WanAttention):
            continue
        processor = cross_attn if module.is_cross_attention else self_attn
        if processor is not None:
            module.processor = processor


def _refuse_per_token_timesteps(module, args, kwargs):
    # Wan 2.2 TI2V passes one timestep per token ([B, N]); its embeddings would then need splitting
    # like the tokens, which WAN_SP_PLAN does not do. Refuse instead of failing on a shape mismatch.
    timestep = kwargs["timestep"] if "timestep" in kwargs else (args[1] if len(args) > 1 else None)
    if timestep is not None and timestep.ndim == 2:
        raise NotImplementedError(
            "sequence parallelism for Wan does not support per-token timesteps ([B, N], Wan 2.2 TI2V); "
            "pass one timestep per sample"
        )
