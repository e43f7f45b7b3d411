"""Ulysses sequence parallelism and the attention backend for diffusers' ``MochiTransformer3DModel``,
without touching diffusers' code.

    from fastvideo.models.mochi_sp import configure_mochi_attention, enable_mochi_sequence_parallel
    enable_mochi_sequence_parallel(transformer, dims.sp_mesh, backend="sdpa")   # or a ProcessGroup
    configure_mochi_attention(transformer, backend="flash")                     # no SP: flash-attn only
    out = transformer(latents, prompt_embeds, timestep, prompt_mask, return_dict=False)[0]

Every rank of the SP group must pass the same full inputs; every rank gets the same full output
[B, C, T, H, W], equal to the single-process output. Gradients follow the convention documented in
:mod:`fastvideo.parallel.sequence_parallel`: the exact gradient is the MEAN over the SP group of the
ranks' gradients (what FSDP2 does when its mesh contains the SP ranks), with no loss scaling.

What is installed (instance-level only: per-module hooks and ``attn.processor`` attributes):

* ``rope``: its output, the (cos, sin) tables over the full grid, is split along the token dim like
  the tokens, so every token keeps its global position, and is wrapped in :class:`ShardedRope`,
  which also carries the :class:`SeqShard` (true token count) down to attention.
* ``transformer_blocks.0``: its ``hidden_states`` input, [B, N, D] right after patch embedding, is
  split along N (zero-padded to a multiple of P). T, H and W need not be divisible by anything.
* every ``MochiAttention``: :class:`MochiUlyssesAttnProcessor` replaces ``MochiAttnProcessor2_0``.
* ``proj_out``: its output is all-gathered along N and the padding dropped, so Mochi's own
  unpatchify sees the full sequence.

The text stream (``encoder_hidden_states``) is replicated: every rank computes it in full.

Without SP the same processor (no group, no hooks) runs Mochi's joint attention on the chosen
kernel (``fastvideo.models.attention``); with the sdpa kernel and no SP, diffusers' own
``MochiAttnProcessor2_0`` is left in place, so that case is diffusers' code exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import MochiTransformer3DModel
from diffusers.models.attention_processor import MochiAttention

from fastvideo.models.attention import attend
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

MOCHI_SP_PLAN = SPPlan(
    split_outputs=(SplitOutput("rope", dim=0, wrap=ShardedRope.from_split),),
    split_inputs=(SplitInput("transformer_blocks.0", arg="hidden_states", position=0, dim=1),),
    gather_outputs=(GatherOutput("proj_out", dim=1),),
)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (even, odd) channel pairs of x [B, N, H, D] by the angles in cos/sin [N, H, D/2], in fp32."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    rotated_even = (even * cos - odd * sin).to(x.dtype)
    rotated_odd = (even * sin + odd * cos).to(x.dtype)
    return torch.stack([rotated_even, rotated_odd], dim=-1).flatten(-2)


def _video_qkv(
    attn: MochiAttention, hidden_states: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Q, K, V of the local video tokens, all heads, RoPE (cos, sin) applied: [3, B, N/P, H, D]."""
    query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)))
    key = attn.norm_k(attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)))
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    if rope is not None:
        # The tables are per head, so rotate before the all-to-all while this rank still has every head.
        query, key = _apply_rope(query, *rope), _apply_rope(key, *rope)
    return torch.stack([query, key, value])


def _text_qkv(
    attn: MochiAttention, encoder_hidden_states: torch.Tensor, rank: int, world: int
) -> torch.Tensor:
    """Q, K, V of all text tokens for this rank's heads only: [3, B, L, H/P, D].

    Computed in full on every rank (the text stream is replicated) and then sliced, so the
    projections never need to know how their weights are stored (plain, sharded, ...).
    """
    query = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1)))
    key = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1)))
    value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
    local_heads = attn.heads // world
    qkv = torch.stack([query, key, value])
    return qkv.narrow(3, rank * local_heads, local_heads)


def _attend_per_sample(
    video: torch.Tensor, text: torch.Tensor, attention_mask: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention over [video; valid text] per sample, as ``MochiAttnProcessor2_0`` does.

    video: [3, B, N, h, D] (all real tokens), text: [3, B, L, h, D]. Returns the video output
    [B, N, h, D] and the text output [B, L, h, D], whose first (number of valid tokens) rows hold the
    valid tokens' outputs and the rest zeros, exactly Mochi's layout.
    """
    num_video, num_text = video.shape[2], text.shape[2]
    video_outs, text_outs = [], []
    for b in range(video.shape[1]):
        if attention_mask is None:
            keep = torch.arange(num_text, device=text.device)
        else:
            keep = torch.nonzero(attention_mask[b].flatten(), as_tuple=False).flatten()
        # [3, 1, h, N + L_valid, D]: heads before tokens, as scaled_dot_product_attention wants.
        qkv = torch.cat([video[:, b : b + 1], text[:, b : b + 1, keep]], dim=2).transpose(2, 3)
        out = attend(qkv[0], qkv[1], qkv[2], backend).transpose(1, 2)  # [1, N + L_valid, h, D]
        video_outs.append(out[:, :num_video])
        text_outs.append(F.pad(out[:, num_video:], (0, 0, 0, 0, 0, num_text - keep.numel())))
    return torch.cat(video_outs), torch.cat(text_outs)


class MochiUlyssesAttnProcessor(UlyssesProcessor):
    """fastvideo's replacement for ``MochiAttnProcessor2_0``: Ulysses SP (with a group) on any kernel.

    With an SP group it needs the plan's :class:`ShardedRope`. Local video Q/K/V [B, N/P, H, D] ->
    all-to-all -> [B, N, H/P, D] (padding dropped); text Q/K/V replicated and sliced to the same
    heads; per-sample attention over [video; valid text]; video output back through the inverse
    all-to-all to [B, N/P, H, D]; text output all-gathered over heads so the replicated text stream
    stays identical on every rank. Without a group (``sp_group=None``) it is Mochi's attention on
    the ``backend`` kernel.
    """

    def __call__(
        self,
        attn: MochiAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_rotary_emb: ShardedRope | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.group is None:
            return self._attend_whole(
                attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
        if not isinstance(image_rotary_emb, ShardedRope):
            raise RuntimeError(
                "MochiUlyssesAttnProcessor needs the RoPE tables split by MOCHI_SP_PLAN; "
                "install it with enable_mochi_sequence_parallel(), not by hand"
            )
        shard = image_rotary_emb.shard
        # Every rank now holds every (real) token for its heads; padding would dilute the softmax.
        rope = (image_rotary_emb.cos, image_rotary_emb.sin)
        video = seq_to_heads(_video_qkv(attn, hidden_states, rope), self.group, seq_dim=2, head_dim=3)
        video = trim(video, 2, shard.full_len)
        text = _text_qkv(attn, encoder_hidden_states, shard.rank, shard.world)

        video_out, text_out = _attend_per_sample(video, text, attention_mask, self.backend)

        video_out, _ = pad_to_multiple(video_out, 1, shard.world)
        video_out = heads_to_seq(video_out, self.group, seq_dim=1, head_dim=2).flatten(2, 3)
        text_out = all_gather_along(text_out, 2, self.group).flatten(2, 3)
        return self._project(attn, video_out, text_out)

    def _attend_whole(self, attn, hidden_states, encoder_hidden_states, attention_mask, rope):
        video = _video_qkv(attn, hidden_states, rope)
        text = _text_qkv(attn, encoder_hidden_states, 0, 1)
        video_out, text_out = _attend_per_sample(video, text, attention_mask, self.backend)
        return self._project(attn, video_out.flatten(2, 3), text_out.flatten(2, 3))

    @staticmethod
    def _project(attn: MochiAttention, video_out: torch.Tensor, text_out: torch.Tensor):
        hidden_states = attn.to_out[1](attn.to_out[0](video_out))
        if hasattr(attn, "to_add_out"):
            text_out = attn.to_add_out(text_out)
        return hidden_states, text_out


def enable_mochi_sequence_parallel(
    transformer: MochiTransformer3DModel, sp_group: SPGroup, backend: str = "sdpa"
) -> None:
    """Make ``transformer`` run Ulysses SP over ``sp_group`` (a ProcessGroup or 1-D DeviceMesh).

    Only this instance changes (hooks + per-module processors). Call it once, on the plain model or
    after ``fully_shard`` / checkpoint wrappers, either works. An SP size of 1 only sets the kernel
    (``configure_mochi_attention``). Raises ValueError when the head count is not divisible by the
    SP size.
    """
    if group_size(sp_group) == 1:
        configure_mochi_attention(transformer, backend)
        return
    processor = MochiUlyssesAttnProcessor(sp_group, backend)
    enable_ulysses(
        transformer, sp_group, MOCHI_SP_PLAN, "Mochi", lambda: _set_processor(transformer, processor)
    )


def configure_mochi_attention(transformer: MochiTransformer3DModel, backend: str) -> None:
    """Without SP: diffusers' processor for sdpa, fastvideo's (group-less) processor for flash."""
    if backend != "sdpa":
        _set_processor(transformer, MochiUlyssesAttnProcessor(None, backend))


def _set_processor(transformer: torch.nn.Module, processor: MochiUlyssesAttnProcessor) -> None:
    for module in transformer.modules():
        if isinstance(module, MochiAttention):
            module.processor = processor
