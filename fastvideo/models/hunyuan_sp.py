"""Ulysses sequence parallelism and the attention backend for diffusers' ``HunyuanVideoTransformer3DModel``,
without touching diffusers' code.

    from fastvideo.models.hunyuan_sp import configure_hunyuan_attention, enable_hunyuan_sequence_parallel
    enable_hunyuan_sequence_parallel(transformer, dims.sp_mesh, backend="sdpa")   # or a ProcessGroup
    configure_hunyuan_attention(transformer, backend="flash")                     # no SP: flash-attn only
    out = transformer(latents, timestep, prompt_embeds, prompt_mask, pooled_embeds, guidance=guidance,
                      return_dict=False)[0]

Every rank of the SP group must pass the same full inputs; every rank gets the same full output
[B, C, T, H, W], equal to the single-process output. Gradients follow the convention documented in
:mod:`fastvideo.parallel.sequence_parallel`: the exact gradient is the MEAN over the SP group of the
ranks' gradients (what FSDP2 does when its mesh contains the SP ranks), with no loss scaling.

HunyuanVideo has two kinds of blocks, both attending jointly over [video tokens; text tokens] with the
text padding masked out of the keys:

* dual-stream (``transformer_blocks``): video and text have their own projections and MLPs;
* single-stream (``single_transformer_blocks``): diffusers concatenates [video; text] inside the block
  and runs one set of per-token projections over both. Per token, so with this rank's video tokens
  and the full text it computes exactly the rows of the whole concatenation that it holds.

What is installed (instance-level only: per-module hooks and ``attn.processor`` attributes):

* ``rope``: its output, the (cos, sin) tables [N, D] over the full video grid, is split along N like
  the tokens, so every token keeps its global position, and is wrapped in :class:`ShardedRope`, which
  also carries the :class:`SeqShard` (true token count) down to attention.
* ``transformer_blocks.0``: its ``hidden_states`` input, [B, N, D] right after patch embedding, is
  split along N (zero-padded to a multiple of P). T, H and W need not be divisible by anything.
* the joint attention of every block: :class:`HunyuanUlyssesAttnProcessor` replaces diffusers'
  ``HunyuanVideoAttnProcessor2_0``.
* ``proj_out``: its output is all-gathered along N and the padding dropped, so diffusers' own
  unpatchify sees the full sequence.
* image-to-video (``image_condition_type`` token_replace): a pre-hook on every block turns the count of
  first-frame tokens (modulated as timestep 0) into this rank's count, a prefix of its tokens.

The text stream (``encoder_hidden_states``, after diffusers' token refiner) is replicated: every rank
computes it in full, and the attention all-gathers its output over heads so it stays identical on
every rank. The token refiner's own attention (text only) keeps diffusers' processor in every case.

Without SP, :class:`HunyuanUlyssesAttnProcessor` (no group, no hooks) runs the joint attention on the
chosen kernel; with the sdpa kernel and no SP, diffusers' processors are left in place, so that case
is diffusers' code exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from fastvideo.models.attention import attend, check_kernel
from fastvideo.parallel.sequence_parallel import (
    GatherOutput,
    ShardedRope,
    SPGroup,
    SplitInput,
    SplitOutput,
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

HUNYUAN_SP_PLAN = SPPlan(
    split_outputs=(SplitOutput("rope", dim=0, wrap=ShardedRope.from_split),),
    split_inputs=(SplitInput("transformer_blocks.0", arg="hidden_states", position=0, dim=1),),
    gather_outputs=(GatherOutput("proj_out", dim=1),),
)


# --- the math -----------------------------------------------------------------------------------------


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(2, (attn.heads, -1))


def _video_qkv(attn: Attention, hidden_states: torch.Tensor, rope) -> torch.Tensor:
    """Q, K, V of the given video tokens, all heads, normed and rotated as diffusers does: [3, B, N, H, D].

    The norms are per head and per token and the RoPE tables per token, so this runs on an SP rank's
    local tokens before the all-to-all.
    """
    query, key = _heads(attn, attn.to_q(hidden_states)), _heads(attn, attn.to_k(hidden_states))
    value = _heads(attn, attn.to_v(hidden_states))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rope is not None:
        cos_sin = (rope[0], rope[1])
        query = apply_rotary_emb(query, cos_sin, sequence_dim=1)
        key = apply_rotary_emb(key, cos_sin, sequence_dim=1)
    return torch.stack([query, key, value])


def _text_qkv(attn: Attention, text: torch.Tensor) -> torch.Tensor:
    """Q, K, V of every text token, all heads: [3, B, L, H, D]. Dual-stream blocks project the text with
    their ``add_*`` projections, single-stream ones with the video's (diffusers concatenates first)."""
    dual = attn.add_q_proj is not None
    project = (
        (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if dual else (attn.to_q, attn.to_k, attn.to_v)
    )
    norm_q, norm_k = (attn.norm_added_q, attn.norm_added_k) if dual else (attn.norm_q, attn.norm_k)
    query, key, value = (_heads(attn, proj(text)) for proj in project)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return torch.stack([query, key, value])


def _text_keep(attention_mask: torch.Tensor | None, num_text: int) -> torch.Tensor | None:
    """[B, L] bool: which text tokens are keys. diffusers' mask [B, 1, 1, N + L] marks every video token
    and the valid text tokens; its last L entries are the text's."""
    return None if attention_mask is None else attention_mask.flatten(1)[:, -num_text:].bool()


def _joint_attention(
    video: torch.Tensor, text: torch.Tensor, text_keep: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every [video; text] query over [video; valid text] keys, as diffusers computes it.

    video: [3, B, N, h, D] (all real tokens), text: [3, B, L, h, D]. Returns the video output
    [B, N, h, D] and the text output [B, L, h, D] (padded text tokens are queries too, as in diffusers).
    sdpa takes diffusers' boolean key mask; flash-attn has no masks, so it drops the masked keys per sample.
    """
    num_video = video.shape[2]
    query, key, value = torch.cat([video, text], dim=2).transpose(2, 3).unbind(0)  # [B, h, N + L, D]
    if text_keep is None:
        out = attend(query, key, value, backend)
    elif backend == "sdpa":
        keep = torch.cat([text_keep.new_ones(text_keep.shape[0], num_video), text_keep], dim=1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=keep[:, None, None], dropout_p=0.0)
    else:
        outs = []
        for b in range(query.shape[0]):
            keys = torch.cat([torch.arange(num_video, device=key.device),
                              num_video + torch.nonzero(text_keep[b]).flatten()])  # fmt: skip
            outs.append(attend(query[b : b + 1], key[b : b + 1, :, keys], value[b : b + 1, :, keys], backend))
        out = torch.cat(outs)
    out = out.transpose(1, 2).type_as(query)  # [B, N + L, h, D]
    return out[:, :num_video], out[:, num_video:]


def _project(attn: Attention, video_out: torch.Tensor, text_out: torch.Tensor):
    """The output projections, where the block has them (single-stream blocks project after the MLP)."""
    if getattr(attn, "to_out", None) is not None:
        video_out = attn.to_out[1](attn.to_out[0](video_out))
    if getattr(attn, "to_add_out", None) is not None:
        text_out = attn.to_add_out(text_out)
    return video_out, text_out


# --- the processor ------------------------------------------------------------------------------------


class HunyuanUlyssesAttnProcessor(UlyssesProcessor):
    """fastvideo's replacement for ``HunyuanVideoAttnProcessor2_0`` in both kinds of blocks: Ulysses SP
    (with a group) on any kernel.

    With an SP group it needs the plan's :class:`ShardedRope`. Local video Q/K/V [B, N/P, H, D] (normed
    and rotated with this rank's table rows) -> all-to-all -> [B, N, H/P, D] (padding dropped); text
    Q/K/V computed in full and sliced to the same heads; joint attention with the text mask; video
    output back through the inverse all-to-all to [B, N/P, H, D]; text output all-gathered over heads.
    Without a group (``sp_group=None``) it is diffusers' joint attention on the ``backend`` kernel.
    """

    def __init__(self, sp_group: SPGroup | None, backend: str = "sdpa") -> None:
        check_kernel(backend)
        super().__init__(sp_group, backend)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: ShardedRope | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            raise RuntimeError(
                "HunyuanUlyssesAttnProcessor is for the joint video-text attention of the blocks"
            )
        text = _text_qkv(attn, encoder_hidden_states)
        keep = _text_keep(attention_mask, encoder_hidden_states.shape[1])
        if self.group is None:
            video = _video_qkv(attn, hidden_states, image_rotary_emb)
            video_out, text_out = _joint_attention(video, text, keep, self.backend)
            return _project(attn, video_out.flatten(2, 3), text_out.flatten(2, 3))
        if not isinstance(image_rotary_emb, ShardedRope):
            raise RuntimeError(
                "HunyuanUlyssesAttnProcessor needs the RoPE tables split by HUNYUAN_SP_PLAN; "
                "install it with enable_hunyuan_sequence_parallel(), not by hand"
            )
        shard = image_rotary_emb.shard
        video = _video_qkv(attn, hidden_states, image_rotary_emb)
        # Every rank now holds every (real) video token for its heads; padding would dilute the softmax.
        video = trim(seq_to_heads(video, self.group, seq_dim=2, head_dim=3), 2, shard.full_len)
        local_heads = attn.heads // shard.world
        text = text.narrow(3, shard.rank * local_heads, local_heads)
        video_out, text_out = _joint_attention(video, text, keep, self.backend)
        video_out, _ = pad_to_multiple(video_out, 1, shard.world)
        video_out = heads_to_seq(video_out, self.group, seq_dim=1, head_dim=2).flatten(2, 3)
        text_out = all_gather_along(text_out, 2, self.group).flatten(2, 3)
        return _project(attn, video_out, text_out)


# --- installing ---------------------------------------------------------------------------------------


def enable_hunyuan_sequence_parallel(
    transformer: HunyuanVideoTransformer3DModel, sp_group: SPGroup, backend: str = "sdpa"
) -> None:
    """Make ``transformer`` run Ulysses SP over ``sp_group`` (a ProcessGroup or 1-D DeviceMesh).

    Only this instance changes (hooks + per-module processors). Call it once, on the plain model or
    after ``fully_shard`` / checkpoint wrappers, either works. An SP size of 1 only sets the kernel
    (:func:`configure_hunyuan_attention`). Raises ValueError when the head count is not divisible by
    the SP size, RuntimeError when SP is already enabled.
    """
    check_kernel(backend)
    if group_size(sp_group) == 1:
        configure_hunyuan_attention(transformer, backend)
        return
    processor = HunyuanUlyssesAttnProcessor(sp_group, backend)
    enable_ulysses(
        transformer, sp_group, HUNYUAN_SP_PLAN, "HunyuanVideo", lambda: _set_processor(transformer, processor)
    )
    if transformer.config.image_condition_type == "token_replace":
        for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
            block.register_forward_pre_hook(_local_first_frame_tokens)


def _local_first_frame_tokens(block: torch.nn.Module, args: tuple):
    """Image-to-video (token_replace): a block modulates the first ``num_tokens`` video tokens, the first
    latent frame's, as timestep 0. Those are a prefix of the global sequence, so on an SP rank they are a
    prefix of its own tokens too: this rank's count replaces the global one (its 7th argument, after the
    :class:`ShardedRope` as 5th, as diffusers' forward passes both)."""
    if len(args) < 7 or not isinstance(args[4], ShardedRope):
        return None
    shard = args[4].shard
    local = min(max(args[6] - shard.start, 0), shard.chunk_len)
    return (*args[:6], local, *args[7:])


def configure_hunyuan_attention(transformer: HunyuanVideoTransformer3DModel, backend: str) -> None:
    """Without SP: diffusers' processors for sdpa, fastvideo's (group-less) processor for flash."""
    check_kernel(backend)
    if backend != "sdpa":
        _set_processor(transformer, HunyuanUlyssesAttnProcessor(None, backend))


def _set_processor(transformer: torch.nn.Module, processor: HunyuanUlyssesAttnProcessor) -> None:
    """On the joint attention of every block (what diffusers gives ``HunyuanVideoAttnProcessor2_0``), not
    on the token refiner's text self-attention."""
    for module in transformer.modules():
        if isinstance(module, Attention) and isinstance(
            module.processor, (HunyuanVideoAttnProcessor2_0, HunyuanUlyssesAttnProcessor)
        ):
            module.processor = processor
