"""Wan 2.1 / 2.2 adapter: loads a diffusers-layout ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` directory (or the
embedded tiny one).

Layout: ``transformer/``, ``vae/``, ``text_encoder/`` (UMT5), ``tokenizer/``, ``scheduler/``,
``model_index.json``. Text is encoded by ``WanPipeline``'s own prompt encoder (512 tokens; the
embedding is zero past each prompt's length, and the DiT takes no mask), so the conditioning record
is ``{"prompt_embeds": [B, 512, D]}``. The unconditional input is the encoded empty prompt, as
``WanPipeline`` samples and Wan's trainers drop captions to.

Latents are normalised as ``WanPipeline`` un-normalises them before decoding:
``(z - latents_mean) / latents_std`` per channel, from the VAE config. Time runs forward: the DiT
sees ``1000 * sigma`` and predicts the flow velocity ``noise - x0`` itself. The default schedule is
``FlowMatchEulerDiscreteScheduler`` with the folder's flow shift (``flow_shift`` of its UniPC
scheduler config, or ``shift``), so Euler sampling here equals ``WanPipeline`` with that scheduler.

Image-to-video (a ``WanImageToVideoPipeline`` folder: its DiT has ``image_dim``): the record adds
``image_embeds`` (the CLIP vision tower's penultimate hidden states of the first frame, as the
pipeline's ``encode_image``) and ``image_latents`` (the normalised latents of the first frame
followed by black frames, as the pipeline's ``prepare_latents``). The DiT sees the noisy latents,
a 4-channel mask marking the first latent frame and ``image_latents``, concatenated on channels.
Caption dropout and guidance replace only the text; the image stays.
"""

from __future__ import annotations

import json
import re

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, UMT5EncoderModel

from fastvideo.models.base import Condition, ModelAdapter, SamplingDefaults, VideoRules

DEFAULT_FLOW_SHIFT = 3.0  # Wan 2.1 at 480p (the 1.3B model's scheduler config)
# (diffusers' sub-module, its projection) -> the original checkpoint's name (what ComfyUI loads).
WAN_COMFYUI_NAMES = {
    **{(attn, proj): f"{prefix}.{short}"
       for attn, prefix in (("attn1", "self_attn"), ("attn2", "cross_attn"))
       for proj, short in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"))},
    ("attn2", "add_k_proj"): "cross_attn.k_img",
    ("attn2", "add_v_proj"): "cross_attn.v_img",
    ("ffn", "net.0.proj"): "ffn.0",
    ("ffn", "net.2"): "ffn.2",
}  # fmt: skip


class WanAdapter(ModelAdapter):
    family = "wan"
    rules = VideoRules(temporal_factor=4, spatial_factor=8, patch_size=2, temporal_patch=1)
    max_text_tokens = 512
    text_condition_keys = ("prompt_embeds",)
    block_lists = ("blocks",)
    # Self- and cross-attention projections (the targets of diffusers' and finetrainers' Wan LoRAs).
    lora_targets = "to_q,to_k,to_v,to_out.0"
    sampling = SamplingDefaults(num_inference_steps=50, guidance_scale=5.0, fps=16.0)

    def __init__(
        self, model_path, *, device="cpu", dtype=torch.float32, vae_tiling: bool = False, expert: str = ""
    ):
        super().__init__(model_path, device=device, dtype=dtype, expert=expert)
        self.vae_tiling = vae_tiling

    # --- text- or image-to-video ------------------------------------------------------------------
    @property
    def image_to_video(self) -> bool:
        """A Wan 2.1 image-to-video folder: its DiT takes CLIP image tokens (``image_dim`` is set)."""
        config = self.model_path / "transformer" / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("image_dim") is not None

    @property
    def image_condition_keys(self) -> tuple[str, ...]:
        return ("image_embeds", "image_latents") if self.image_to_video else ()

    @property
    def pipeline_class_name(self) -> str:
        return "WanImageToVideoPipeline" if self.image_to_video else "WanPipeline"

    # --- VAE -------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """The VAE's ``z_dim`` (16 for Wan 2.1; the folder says, so a smaller tiny VAE works too)."""
        config = self.model_path / "vae" / "config.json"
        return json.loads(config.read_text()).get("z_dim", 16) if config.is_file() else 16

    def load_vae(self) -> AutoencoderKLWan:
        # Wan's VAE runs in float32 in WanPipeline's examples; bf16 costs it visible quality.
        vae = AutoencoderKLWan.from_pretrained(self.model_path, subfolder="vae", torch_dtype=torch.float32)
        if self.vae_tiling:
            vae.enable_tiling()
        return vae.to(self.device).eval().requires_grad_(False)

    def _latent_stats(self, vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    @torch.no_grad()
    def encode_video(self, vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, vae.dtype)
        # The posterior mean, so preprocessing is deterministic (as for Mochi).
        latents = vae.encode(video).latent_dist.mode().float()
        mean, std = self._latent_stats(vae, latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, torch.float32)
        mean, std = self._latent_stats(vae, latents)
        latents = latents * std + mean
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    # --- transformer -----------------------------------------------------------------------------
    def transformer_class(self) -> type[WanTransformer3DModel]:
        return WanTransformer3DModel

    def init_buffers(self, transformer: WanTransformer3DModel) -> None:
        # The RoPE tables are non-persistent buffers: a meta-device build leaves them empty.
        rope = transformer.rope
        with torch.device("cpu"):
            fresh = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
        device = next(transformer.parameters()).device
        device = torch.device("cpu") if device.type == "meta" else device
        rope.freqs_cos = fresh.freqs_cos.to(device)
        rope.freqs_sin = fresh.freqs_sin.to(device)

    def set_attention(self, transformer, sp_group=None, backend: str = "sdpa") -> None:
        from fastvideo.models.wan_sp import configure_wan_attention, enable_wan_sequence_parallel

        if sp_group is None:
            configure_wan_attention(transformer, backend)
        else:
            enable_wan_sequence_parallel(transformer, sp_group, backend)

    def predict_velocity(self, transformer, noisy_latents, sigmas, cond: Condition):
        # Forward time: the DiT sees 1000 * sigma (FlowMatchEulerDiscreteScheduler's timesteps) and
        # predicts the velocity noise - x0 itself.
        hidden_states = noisy_latents
        if "image_latents" in cond:  # image-to-video: [noisy, first-frame mask, first-frame latents]
            image = cond["image_latents"].to(noisy_latents.dtype)
            mask = torch.zeros_like(image[:, :4])
            mask[:, :, 0] = 1
            hidden_states = torch.cat([noisy_latents, mask, image], dim=1)
        return transformer(
            hidden_states=hidden_states,
            timestep=sigmas * 1000.0,
            encoder_hidden_states=cond["prompt_embeds"],
            encoder_hidden_states_image=cond.get("image_embeds"),
            return_dict=False,
        )[0]

    def flow_shift(self) -> float:
        config = self.model_path / "scheduler" / "scheduler_config.json"
        values = json.loads(config.read_text()) if config.is_file() else {}
        return float(values.get("flow_shift") or values.get("shift") or DEFAULT_FLOW_SHIFT)

    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=self.flow_shift())
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.to(torch.float32)

    def comfyui_target(self, name: str) -> tuple[str, int, int]:
        # diffusers' attn1/attn2 are Wan's self_attn/cross_attn, to_q/k/v/out.0 its q/k/v/o, ffn.net.0.proj
        # and ffn.net.2 its ffn.0 and ffn.2: the names of the original checkpoint that ComfyUI loads.
        parts = re.fullmatch(r"blocks\.(\d+)\.(attn1|attn2|ffn)\.(.+)", name)
        renamed = parts and WAN_COMFYUI_NAMES.get((parts[2], parts[3]))
        if not renamed:
            raise ValueError(f"no ComfyUI name for Wan module {name!r}")
        return f"blocks.{parts[1]}.{renamed}", 0, 1

    def pcm_schedule(self) -> dict:
        return {"schedule": "shift", "shift": self.flow_shift()}

    # --- text ------------------------------------------------------------------------------------
    def text_classes(self) -> tuple[type, type]:
        return AutoTokenizer, UMT5EncoderModel

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Condition:
        embeds = self.text_pipeline()._get_t5_prompt_embeds(
            prompt=prompts, max_sequence_length=self.max_text_tokens, device=self.device, dtype=torch.float32
        )
        return {"prompt_embeds": embeds}

    # --- image (image-to-video) ------------------------------------------------------------------
    def load_image_encoder(self) -> None:
        """The CLIP vision tower and its processor, in a pipeline holding only them (the pipeline's own
        ``encode_image`` then encodes first frames)."""
        from diffusers import WanImageToVideoPipeline
        from transformers import CLIPImageProcessor, CLIPVisionModel

        processor = CLIPImageProcessor.from_pretrained(self.model_path, subfolder="image_processor")
        encoder = CLIPVisionModel.from_pretrained(
            self.model_path, subfolder="image_encoder", torch_dtype=self.dtype
        )
        encoder = encoder.to(self.device).eval().requires_grad_(False)
        self._image_pipe = WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=processor,
            image_encoder=encoder,
        )  # fmt: skip

    @torch.no_grad()
    def encode_first_frames(
        self, vae: AutoencoderKLWan, images: list, num_frames: int, height: int, width: int, generator=None
    ):
        """The image conditioning of first frames (PIL images), batched: ``image_embeds`` from the CLIP tower
        (``load_image_encoder`` first) and ``image_latents``: each image resized to ``height`` x ``width``,
        followed by ``num_frames - 1`` zero frames, encoded to the posterior mode and normalised, as
        ``WanImageToVideoPipeline.prepare_latents`` does (the mode: ``generator`` is not used)."""
        if getattr(self, "_image_pipe", None) is None:
            raise RuntimeError("call load_image_encoder() before encode_first_frames()")
        embeds = self._image_pipe.encode_image(images, self.device).float()
        pixels = VideoProcessor(vae_scale_factor=self.rules.spatial_factor).preprocess(
            images, height=height, width=width
        )
        pixels = pixels.to(self.device, torch.float32)
        video = torch.cat(
            [pixels[:, :, None], pixels.new_zeros(*pixels.shape[:2], num_frames - 1, height, width)], 2
        )
        latents = vae.encode(video.to(vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_stats(vae, latents)
        return {"image_embeds": embeds, "image_latents": (latents - mean) * (1.0 / std)}

    def null_condition(self, like: Condition, empty: Condition | None = None) -> Condition:
        return self.empty_prompt_condition(like, empty)
