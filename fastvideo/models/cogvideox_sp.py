"""Ulysses sequence parallelism and the attention backend for diffusers' ``CogVideoXTransformer3DModel``,
without touching diffusers' code.

    from fastvideo.models.cogvideox_sp import configure_cogvideox_attention, enable_cogvideox_sequence_parallel
    enable_cogvideox_sequence_parallel(transformer, dims.sp_mesh, backend="sdpa")   # or a ProcessGroup
    configure_cogvideox_attention(transformer, backend="flash")                     # no SP: flash-attn only
    out = transformer(latents, prompt_embeds, timestep, image_rotary_emb=rope, return_dict=False)[0]

Every rank of the SP group must pass the same full inputs; every rank gets the same full output
[B, F, C, H, W], equal to the single-process output. Gradients follow the convention of
:mod:`fastvideo.parallel.sequence_parallel` (the exact gradient is the SP mean of the ranks' gradients).

CogVideoX runs joint attention over [text; video] with the same projections for both streams and no
mask (the prompt is padded to 226 tokens and all of them attend). Its positional information is
either added in ``patch_embed`` (sinusoidal or learned, on the full sequence before any split) or
rotary tables the *caller* computes and passes as ``image_rotary_emb`` (CogVideoXPipeline does; so
does :class:`fastvideo.models.cogvideox.CogVideoXAdapter`). What is installed:

* a pre-hook on the model: ``image_rotary_emb`` becomes a :class:`ShardedRope` holding this rank's
  table rows and the :class:`SeqShard` (``cos``/``sin`` None for a model without rotary tables), so
  attention knows every token's global position and the true token count;
* ``transformer_blocks.0``: its ``hidden_states`` input, the video tokens [B, N, D] after patch
  embedding, is split along N (zero-padded to a multiple of P);
* every block's ``attn1``: :class:`CogVideoXUlyssesAttnProcessor` replaces ``CogVideoXAttnProcessor2_0``;
* ``proj_out``: its output is all-gathered along N and the padding dropped, before unpatchify.

The text stream is replicated: every rank computes it in full, attends with its heads, and the
text output is all-gathered over heads so it stays identical on every rank (as for Mochi).
"""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from fastvideo.models.attention import attend, check_kernel
from fastvideo.parallel.sequence_parallel import (
    GatherOutput,
    SeqShard,
    ShardedRope,
    SPGroup,
    SplitInput,
    SPPlan,
    UlyssesProcessor,
    all_gather_along,
    enable_ulysses,
    group_size,
    heads_to_seq,
    pad_to_multiple,
    seq_to_heads,
    trim,
)

COGVIDEOX_SP_PLAN = SPPlan(
    split_inputs=(SplitInput("transformer_blocks.0", arg="hidden_states", position=0, dim=1),),
    gather_outputs=(GatherOutput("proj_out", dim=1),),
)


def video_tokens(transformer: CogVideoXTransformer3DModel, latents: torch.Tensor) -> int:
    """Video tokens of latents [B, F, C, H, W] after CogVideoX's patch embedding."""
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t or 1
    frames, height, width = latents.shape[1], latents.shape[3], latents.shape[4]
    return -(-frames // p_t) * (height // p) * (width // p)


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """[B, N, H * Dh] -> [B, N, H, Dh]."""
    return x.unflatten(2, (attn.heads, -1))


def _qkv(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Q, K, V of tokens x [B, N, D], all heads, Q and K normed per head: [3, B, N, H, Dh]."""
    if getattr(attn, "fused_projections", False):
        raise NotImplementedError(
            "fused QKV projections are not supported with fastvideo's CogVideoX attention"
        )
    query, key, value = _heads(attn, attn.to_q(x)), _heads(attn, attn.to_k(x)), _heads(attn, attn.to_v(x))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return torch.stack([query, key, value])


def _rotate(qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """RoPE on the video Q and K of qkv [3, B, N, H, Dh] (tables [N, Dh]), diffusers' own function."""
    if rope is None:
        return qkv
    query, key = (apply_rotary_emb(t, rope, sequence_dim=1) for t in (qkv[0], qkv[1]))
    return torch.stack([query, key, qkv[2]])


def _joint_attention(
    text: torch.Tensor, video: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over [text; video] (each [3, B, n, h, Dh], tokens before heads); returns the text and
    video outputs [B, n, h, Dh]."""
    qkv = torch.cat([text, video], dim=2).transpose(2, 3)  # [3, B, h, L + N, Dh]
    out = attend(qkv[0], qkv[1], qkv[2], backend).transpose(1, 2)
    return out[:, : text.shape[2]], out[:, text.shape[2] :]


def _project(attn: Attention, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Heads merged [B, n, H * Dh] in ``like``'s dtype, then the shared output projection and dropout."""
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(like)))


class CogVideoXUlyssesAttnProcessor(UlyssesProcessor):
    """fastvideo's replacement for ``CogVideoXAttnProcessor2_0``: Ulysses SP (with a group) on any kernel.

    With a group: local video Q/K/V [B, N/P, H, Dh] (normed, rotated with this rank's rows) ->
    all-to-all -> [B, N, H/P, Dh], padding dropped; text Q/K/V computed in full and sliced to the same
    heads; attention over [text; video]; the video output back through the inverse all-to-all, the
    text output all-gathered over heads. Without a group it is CogVideoX's attention on the kernel.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: ShardedRope | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise NotImplementedError("CogVideoX attends without a mask; fastvideo's processor takes none")
        text = _qkv(attn, encoder_hidden_states)
        if self.group is None:
            video = _rotate(_qkv(attn, hidden_states), image_rotary_emb)
            text_out, video_out = _joint_attention(text, video, self.backend)
            return _project(attn, video_out, hidden_states), _project(attn, text_out, hidden_states)
        if not isinstance(image_rotary_emb, ShardedRope):
            raise RuntimeError(
                "CogVideoXUlyssesAttnProcessor needs the shard its model's pre-hook makes; "
                "install it with enable_cogvideox_sequence_parallel(), not by hand"
            )
        shard = image_rotary_emb.shard
        rope = None if image_rotary_emb.cos is None else (image_rotary_emb.cos, image_rotary_emb.sin)
        video = _rotate(_qkv(attn, hidden_states), rope)
        video = trim(seq_to_heads(video, self.group, seq_dim=2, head_dim=3), 2, shard.full_len)
        local_heads = attn.heads // shard.world
        text = text.narrow(3, shard.rank * local_heads, local_heads)
        text_out, video_out = _joint_attention(text, video, self.backend)
        video_out, _ = pad_to_multiple(video_out, 1, shard.world)
        video_out = heads_to_seq(video_out, self.group, seq_dim=1, head_dim=2)
        text_out = all_gather_along(text_out, 2, self.group)
        return _project(attn, video_out, hidden_states), _project(attn, text_out, hidden_states)


def _shard_rope_hook(group: SPGroup):
    """Replace the model's ``image_rotary_emb`` argument by this rank's rows of it plus the shard."""

    def hook(module, args, kwargs):
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        shard = SeqShard.of(video_tokens(module, latents), group)
        rope = kwargs.get("image_rotary_emb")
        if rope is None:
            local = ShardedRope(None, None, shard)
        else:
            local = ShardedRope(shard.split(rope[0], 0), shard.split(rope[1], 0), shard)
        return args, {**kwargs, "image_rotary_emb": local}

    return hook


def enable_cogvideox_sequence_parallel(
    transformer: CogVideoXTransformer3DModel, sp_group: SPGroup, backend: str = "sdpa"
) -> None:
    """Make ``transformer`` run Ulysses SP over ``sp_group`` (a ProcessGroup or 1-D DeviceMesh).

    Only this instance changes (hooks + per-module processors); call it once, before or after
    ``fully_shard`` / checkpoint wrappers. The model must be called with keyword arguments from
    ``image_rotary_emb`` on (as CogVideoXPipeline and the adapter do). An SP size of 1 only sets
    the kernel. Raises ValueError when the head count is not divisible by the SP size.
    """
    check_kernel(backend)
    if group_size(sp_group) == 1:
        configure_cogvideox_attention(transformer, backend)
        return
    processor = CogVideoXUlyssesAttnProcessor(sp_group, backend)

    def install() -> None:
        transformer.register_forward_pre_hook(_shard_rope_hook(sp_group), with_kwargs=True)
        _set_processor(transformer, processor)

    enable_ulysses(transformer, sp_group, COGVIDEOX_SP_PLAN, "CogVideoX", install)


def configure_cogvideox_attention(transformer: CogVideoXTransformer3DModel, backend: str) -> None:
    """Without SP: diffusers' processor for sdpa, fastvideo's (group-less) processor for flash."""
    check_kernel(backend)
    if backend != "sdpa":
        _set_processor(transformer, CogVideoXUlyssesAttnProcessor(None, backend))


def _set_processor(transformer: torch.nn.Module, processor: CogVideoXUlyssesAttnProcessor) -> None:
    for block in transformer.transformer_blocks:
        block.attn1.processor = processor
