"""Mochi 1 adapter: loads a diffusers-layout ``genmo/mochi-1-preview`` directory (or the embedded tiny one).

Layout: ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``.
Text is encoded exactly as diffusers' ``MochiPipeline`` does (T5, 256 tokens, boolean mask), by calling
the pipeline's own prompt encoder. Latents are normalised with the VAE config's ``latents_mean`` /
``latents_std`` and ``scaling_factor``, the inverse of what ``MochiPipeline`` applies before decoding,
so precomputed latents live in the same space the transformer samples in.
"""

from __future__ import annotations

import re
import warnings

import torch
from diffusers import AutoencoderKLMochi, MochiTransformer3DModel
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule
from transformers import T5EncoderModel, T5TokenizerFast

from fastvideo.models.base import Condition, ModelAdapter, SamplingDefaults, VideoRules

# diffusers' Mochi RoPE opens a float32 autocast region, which CPU autocast declines with a warning
# on every forward; the computation is fp32 either way.
warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")


# diffusers' attention projection -> (the original checkpoint's module, part, parts), as diffusers'
# convert_mochi_transformer_checkpoint_to_diffusers splits them: qkv_x / qkv_y are to_q, to_k, to_v /
# add_q_proj, add_k_proj, add_v_proj stacked in that order along the output rows.
MOCHI_COMFYUI_NAMES = {
    **{proj: ("attn.qkv_x", i, 3) for i, proj in enumerate(("to_q", "to_k", "to_v"))},
    **{proj: ("attn.qkv_y", i, 3) for i, proj in enumerate(("add_q_proj", "add_k_proj", "add_v_proj"))},
    "to_out.0": ("attn.proj_x", 0, 1),
    "to_add_out": ("attn.proj_y", 0, 1),
}


class MochiAdapter(ModelAdapter):
    family = "mochi"
    rules = VideoRules(temporal_factor=6, spatial_factor=8, patch_size=2)
    latent_channels = 12
    max_text_tokens = 256
    text_condition_keys = ("prompt_embeds", "prompt_attention_mask")
    timesteps_reversed = True
    block_lists = ("transformer_blocks",)
    # Video and text streams of the joint attention (FastVideo's and genmo's LoRA targets).
    lora_targets = "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out"
    pipeline_class_name = "MochiPipeline"
    sampling = SamplingDefaults(num_inference_steps=64, guidance_scale=4.5, fps=30.0)

    def __init__(
        self, model_path, *, device="cpu", dtype=torch.float32, vae_tiling: bool = True, expert: str = ""
    ):
        super().__init__(model_path, device=device, dtype=dtype, expert=expert)
        self.vae_tiling = vae_tiling

    def comfyui_target(self, name: str) -> tuple[str, int, int]:
        parts = re.fullmatch(r"transformer_blocks\.(\d+)\.attn1\.(.+)", name)
        target = parts and MOCHI_COMFYUI_NAMES.get(parts[2])
        if not target:
            raise ValueError(f"no ComfyUI name for Mochi module {name!r} (attention projections only)")
        module, part, count = target
        return f"blocks.{parts[1]}.{module}", part, count

    # --- VAE -------------------------------------------------------------------------------------
    def load_vae(self) -> AutoencoderKLMochi:
        vae = AutoencoderKLMochi.from_pretrained(self.model_path, subfolder="vae", torch_dtype=self.dtype)
        if self.vae_tiling:
            # Only kicks in above the tile size (256 px), so small inputs are encoded whole.
            vae.enable_tiling()
        return vae.to(self.device).eval().requires_grad_(False)

    def _latent_stats(
        self, vae: AutoencoderKLMochi, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std, vae.config.scaling_factor

    @torch.no_grad()
    def encode_video(self, vae: AutoencoderKLMochi, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, vae.dtype)
        # The posterior mean: deterministic, so a resumed or re-run preprocessing gives identical files.
        latents = vae.encode(video).latent_dist.mode().float()
        mean, std, scale = self._latent_stats(vae, latents)
        return (latents - mean) * scale / std

    @torch.no_grad()
    def decode_latents(self, vae: AutoencoderKLMochi, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, torch.float32)
        mean, std, scale = self._latent_stats(vae, latents)
        latents = latents * std / scale + mean
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    # --- transformer -----------------------------------------------------------------------------
    def transformer_class(self) -> type[MochiTransformer3DModel]:
        return MochiTransformer3DModel

    def set_attention(self, transformer, sp_group=None, backend: str = "sdpa") -> None:
        from fastvideo.models.mochi_sp import configure_mochi_attention, enable_mochi_sequence_parallel

        if sp_group is None:
            configure_mochi_attention(transformer, backend)
        else:
            enable_mochi_sequence_parallel(transformer, sp_group, backend)

    def predict_velocity(self, transformer, noisy_latents, sigmas, cond: Condition):
        # Mochi runs time backwards: the DiT sees 1000 * (1 - sigma) and predicts -v
        # (what diffusers' MochiPipeline + FlowMatchEulerDiscreteScheduler(invert_sigmas=True) expect).
        timestep = (1.0 - sigmas) * 1000.0
        out = transformer(
            hidden_states=noisy_latents,
            encoder_hidden_states=cond["prompt_embeds"],
            timestep=timestep,
            encoder_attention_mask=cond["prompt_attention_mask"],
            return_dict=False,
        )[0]
        return -out

    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        # MochiPipeline's schedule (from genmo's reference sampler), then the final 0.
        return torch.tensor([*linear_quadratic_schedule(num_steps, 0.025), 0.0], dtype=torch.float32)

    def pcm_schedule(self) -> dict:
        return {"schedule": "linear_quadratic"}  # Mochi's own sampling schedule

    # --- text ------------------------------------------------------------------------------------
    def text_classes(self) -> tuple[type, type]:
        return T5TokenizerFast, T5EncoderModel

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Condition:
        embeds, mask = self.text_pipeline()._get_t5_prompt_embeds(
            prompt=prompts, max_sequence_length=self.max_text_tokens, device=self.device, dtype=torch.float32
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def null_condition(self, like: Condition, empty: Condition | None = None) -> Condition:
        # A zero embedding with an empty mask, whatever the empty prompt encodes to: what FastVideo's
        # Mochi and genmo's trainer drop captions to.
        return {
            "prompt_embeds": torch.zeros_like(like["prompt_embeds"]),
            "prompt_attention_mask": torch.zeros_like(like["prompt_attention_mask"]),
        }
