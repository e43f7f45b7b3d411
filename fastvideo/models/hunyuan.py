"""HunyuanVideo (text-to-video) adapter: loads a diffusers-layout ``hunyuanvideo-community/HunyuanVideo``
directory (or the embedded tiny one).

Layout: ``transformer/``, ``vae/``, ``text_encoder/`` (Llama) + ``tokenizer/``, ``text_encoder_2/``
(CLIP text) + ``tokenizer_2/``, ``scheduler/``, ``model_index.json``. Text is encoded by
``HunyuanVideoPipeline``'s own ``encode_prompt`` (its prompt template, 256 tokens after the template's
system part is cropped, a mask of the valid tokens; CLIP's pooled output of the prompt), so the
conditioning record is ``{"prompt_embeds": [B, 256, D], "prompt_attention_mask": [B, 256] bool,
"pooled_prompt_embeds": [B, D2]}``. The unconditional input is the encoded empty prompt (all three
tensors), which preprocessing stores once per dataset.

Latents are scaled as ``HunyuanVideoPipeline`` unscales them before decoding: ``z * scaling_factor``
(0.476986 for the real VAE). Time runs forward: the DiT sees ``1000 * sigma`` and predicts the flow
velocity ``noise - x0`` itself. The default schedule is the pipeline's: ``linspace(1, 0, steps + 1)``
shifted by the folder's scheduler ``shift`` (7 in the real folder), then 0.

Embedded guidance
-----------------
HunyuanVideo's DiT is guidance-distilled: it takes the guidance scale as an input (``guidance``, the
scale times 1000, embedded like a timestep), which is what ``HunyuanVideoPipeline``'s ``guidance_scale``
(default 6.0) sets; true classifier-free guidance (two passes) is its ``true_cfg_scale``. Here the
embedded scale is ``embedded_guidance_scale`` (6.0 unless the adapter is made with another), used by
every DiT call: training, validation and sampling alike. It is the value FastVideo fine-tuned and
distilled FastHunyuan with (its DiT's default ``guidance`` of 6016, i.e. 6.0 * 1000 in bf16), and the
``--embedded_cfg_scale 6`` of its inference scripts. fastvideo's own ``guidance_scale`` stays true
classifier-free guidance, off by default for this family (``sampling.guidance_scale`` 1.0), so the
sampler's default samples like ``HunyuanVideoPipeline(guidance_scale=6.0)``.

Image-to-video
--------------
A ``HunyuanVideoImageToVideoPipeline`` folder (``hunyuanvideo-community/HunyuanVideo-I2V``: its DiT's
``image_condition_type`` is ``token_replace``) conditions on the first frame twice:

* the text encoder is Llava (llava-llama-3-8b): the pipeline's own ``encode_prompt`` runs it on the prompt
  in its image-to-video template with the frame's 576 CLIP image tokens in place of ``<image>``, and
  the record's ``prompt_embeds`` / ``prompt_attention_mask`` are every 4th image token followed by the
  prompt's tokens ([B, 144 + 252, D]). So the text record depends on the image: preprocessing encodes
  each caption with its clip's first frame, and a validation prompt with the first frame of a clip whose
  image conditioning its record also stores. The unconditional input is the pipeline's negative: the
  empty prompt with a black image (``encode_prompts`` without images), stored once in
  ``null_condition.pt``; caption dropout and guidance replace that text part and keep the image latents.
* ``image_latents`` [B, C, 1, h, w]: the frame resized to the video's size, encoded alone (the posterior
  mode, as the pipeline takes it) and scaled. The DiT sees them in place of the first latent frame (and
  modulates those tokens as timestep 0); sampling starts from ``0.999 * noise + 0.001 * image_latents``
  as the pipeline does (``initial_latents``). The first frame's velocity is the exact one towards the
  image latents, ``(x - image_latents) / sigma``, so Euler ends on them as the pipeline, which keeps the
  frame, does; in training that frame's error is about zero and carries no gradient (the original
  trainer leaves it out of its mean).

``HunyuanVideo-I2V-33ch`` (``latent_concat``: the image latents on channels, an extra first frame the
pipeline drops) is refused.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoTransformer3DModel,
)
from diffusers.video_processor import VideoProcessor
from PIL import Image
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, LlamaModel

from fastvideo.models.base import Condition, ModelAdapter, SamplingDefaults, VideoRules

DEFAULT_FLOW_SHIFT = 7.0  # hunyuanvideo-community/HunyuanVideo's scheduler config
EMBEDDED_GUIDANCE_SCALE = 6.0  # HunyuanVideoPipeline's default guidance_scale; FastHunyuan's training value
# HunyuanVideoImageToVideoPipeline's start: noise * 0.999 + image latents * 0.001 (float32, as it computes it).
I2V_START_NOISE = torch.tensor([0.999])
# The pipeline keeps every 4th image token of Llava's 576 for a token_replace DiT (its image_embed_interleave).
TOKEN_REPLACE_INTERLEAVE = 4


class HunyuanVideoAdapter(ModelAdapter):
    family = "hunyuan"
    rules = VideoRules(temporal_factor=4, spatial_factor=8, patch_size=2, temporal_patch=1)
    max_text_tokens = 256
    text_condition_keys = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    # The joint attention's video and text projections: what diffusers' HunyuanVideo LoRA converter maps
    # (the original img_attn_qkv / txt_attn_qkv and their output projections). The names match only
    # inside the blocks, so the token refiner's attention stays frozen; single-stream blocks have no add_*
    # projections and no to_out (their output goes through proj_out with the MLP).
    lora_targets = "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out"
    # guidance_scale is true CFG (HunyuanVideoPipeline's true_cfg_scale): off; the embedded one is 6.
    sampling = SamplingDefaults(num_inference_steps=50, guidance_scale=1.0, fps=24.0)

    def __init__(
        self,
        model_path,
        *,
        device="cpu",
        dtype=torch.float32,
        vae_tiling: bool = True,
        expert: str = "",
        embedded_guidance_scale: float = EMBEDDED_GUIDANCE_SCALE,
    ):
        super().__init__(model_path, device=device, dtype=dtype, expert=expert)
        self.vae_tiling = vae_tiling
        self.embedded_guidance_scale = embedded_guidance_scale
        if self.image_condition_type not in (None, "token_replace"):
            raise ValueError(
                f"{self.model_path}: HunyuanVideo image-to-video with image_condition_type "
                f"{self.image_condition_type!r} (HunyuanVideo-I2V-33ch) is not supported; token_replace "
                "(hunyuanvideo-community/HunyuanVideo-I2V) is"
            )

    # --- text- or image-to-video ------------------------------------------------------------------
    @property
    def image_condition_type(self) -> str | None:
        """The DiT's ``image_condition_type``: None (text-to-video) or ``token_replace``."""
        config = self.model_path / "transformer" / "config.json"
        return json.loads(config.read_text()).get("image_condition_type") if config.is_file() else None

    @property
    def image_to_video(self) -> bool:
        return self.image_condition_type is not None

    @property
    def prompt_sees_image(self) -> bool:
        """Image-to-video's Llava encodes the prompt together with the first frame."""
        return self.image_to_video

    @property
    def image_condition_keys(self) -> tuple[str, ...]:
        return ("image_latents",) if self.image_to_video else ()

    @property
    def pipeline_class_name(self) -> str:
        return "HunyuanVideoImageToVideoPipeline" if self.image_to_video else "HunyuanVideoPipeline"

    # --- VAE -------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        config = self.model_path / "vae" / "config.json"
        return json.loads(config.read_text()).get("latent_channels", 16) if config.is_file() else 16

    def load_vae(self) -> AutoencoderKLHunyuanVideo:
        vae = AutoencoderKLHunyuanVideo.from_pretrained(
            self.model_path, subfolder="vae", torch_dtype=self.dtype
        )
        if self.vae_tiling:
            vae.enable_tiling()  # only above 256 px, so small inputs are encoded whole
        return vae.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode_video(self, vae: AutoencoderKLHunyuanVideo, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, vae.dtype)
        # The posterior mean: deterministic, so a resumed or re-run preprocessing gives identical files.
        latents = vae.encode(video).latent_dist.mode().float()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, vae: AutoencoderKLHunyuanVideo, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, torch.float32) / vae.config.scaling_factor
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)

    # --- transformer -----------------------------------------------------------------------------
    def transformer_class(self) -> type[HunyuanVideoTransformer3DModel]:
        return HunyuanVideoTransformer3DModel

    def set_attention(self, transformer, sp_group=None, backend: str = "sdpa") -> None:
        from fastvideo.models.hunyuan_sp import configure_hunyuan_attention, enable_hunyuan_sequence_parallel

        if sp_group is None:
            configure_hunyuan_attention(transformer, backend)
        else:
            enable_hunyuan_sequence_parallel(transformer, sp_group, backend)

    def predict_velocity(self, transformer, noisy_latents, sigmas, cond: Condition):
        # Forward time: the DiT sees 1000 * sigma and predicts the velocity noise - x0 itself (what
        # HunyuanVideoPipeline's FlowMatchEulerDiscreteScheduler steps with). The embedded guidance is
        # made as the pipeline makes it: the scale in the embeddings' dtype, times 1000.
        embeds = cond["prompt_embeds"]
        guidance = torch.full(
            (noisy_latents.shape[0],), self.embedded_guidance_scale, device=embeds.device, dtype=embeds.dtype
        )
        image = cond.get("image_latents")
        hidden_states = noisy_latents
        if image is not None:  # token_replace: the image's latents are the first frame
            hidden_states = torch.cat([image.to(noisy_latents.dtype), noisy_latents[:, :, 1:]], dim=2)
        velocity = transformer(
            hidden_states=hidden_states,
            timestep=sigmas * 1000.0,
            encoder_hidden_states=embeds,
            encoder_attention_mask=cond["prompt_attention_mask"],
            pooled_projections=cond["pooled_prompt_embeds"],
            guidance=guidance * 1000.0,
            return_dict=False,
        )[0]
        if image is None:
            return velocity
        # The given frame's own velocity (noise - x0 with x0 the image latents), in float32.
        s = sigmas.float().view(-1, 1, 1, 1, 1)
        given = (noisy_latents[:, :, :1].float() - image.float()) / s
        return torch.cat([given.to(velocity.dtype), velocity[:, :, 1:]], dim=2)

    def initial_latents(self, noise: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Image-to-video starts from ``0.999 * noise + 0.001 * image_latents`` (every frame), as
        ``HunyuanVideoImageToVideoPipeline.prepare_latents`` does; text-to-video from the noise."""
        image = cond.get("image_latents")
        if image is None:
            return noise
        t = I2V_START_NOISE.to(noise.device)
        return noise * t + image.to(noise.device, noise.dtype) * (1 - t)

    def flow_shift(self) -> float:
        config = self.model_path / "scheduler" / "scheduler_config.json"
        values = json.loads(config.read_text()) if config.is_file() else {}
        return float(values.get("shift") or values.get("flow_shift") or DEFAULT_FLOW_SHIFT)

    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        # HunyuanVideoPipeline hands the scheduler linspace(1, 0, steps + 1)[:-1]; it shifts them and
        # appends 0.
        scheduler = FlowMatchEulerDiscreteScheduler(shift=self.flow_shift())
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
        return scheduler.sigmas.to(torch.float32)

    def pcm_schedule(self) -> dict:
        return {"schedule": "shift", "shift": self.flow_shift()}

    # --- text ------------------------------------------------------------------------------------
    def text_classes(self) -> tuple[type, type]:
        """The Llama (image-to-video: Llava) pair (``tokenizer/``, ``text_encoder/``); CLIP's (``*_2/``) is
        :meth:`clip_classes`."""
        if self.image_to_video:
            from transformers import LlavaForConditionalGeneration

            return AutoTokenizer, LlavaForConditionalGeneration
        return AutoTokenizer, LlamaModel

    def clip_classes(self) -> tuple[type, type]:
        return CLIPTokenizer, CLIPTextModel

    def _load_pair(self, classes: tuple[type, type], suffix: str):
        tokenizer_cls, encoder_cls = classes
        tokenizer = tokenizer_cls.from_pretrained(self.model_path, subfolder=f"tokenizer{suffix}")
        encoder = encoder_cls.from_pretrained(
            self.model_path, subfolder=f"text_encoder{suffix}", torch_dtype=self.dtype
        )
        return tokenizer, encoder.to(self.device).eval().requires_grad_(False)

    def load_text_encoder(self) -> None:
        """Both text encoders and their tokenizers, in a pipeline holding only them (its own
        ``encode_prompt`` then encodes prompts)."""
        tokenizer, text_encoder = self._load_pair(self.text_classes(), "")
        tokenizer_2, text_encoder_2 = self._load_pair(self.clip_classes(), "_2")
        extra = {}
        if self.image_to_video:  # Llava's image processor
            from transformers import CLIPImageProcessor

            extra["image_processor"] = CLIPImageProcessor.from_pretrained(
                self.model_path, subfolder="image_processor"
            )
        self._text_pipe = self.pipeline_class()(
            text_encoder=text_encoder, tokenizer=tokenizer, transformer=None, vae=None, scheduler=None,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, **extra,
        )  # fmt: skip

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], images: list | None = None) -> Condition:
        """The text record of ``prompts``. Image-to-video: each prompt is encoded with its first frame
        (``images``, PIL) in the pipeline's image-to-video template; without ``images``, with a black image,
        the pipeline's unconditional one (its negative prompt's)."""
        pipe = self.text_pipeline()
        extra = {}
        if self.image_to_video:
            if images is None:
                crop = pipe.image_processor.crop_size  # any size: the processor's output is black alike
                images = [Image.new("RGB", (crop["width"], crop["height"]), 0)] * len(prompts)
            extra = {"image": list(images), "image_embed_interleave": TOKEN_REPLACE_INTERLEAVE}
        elif images is not None:
            raise ValueError(
                f"{self.model_path} is a text-to-video model: its prompts are encoded without images"
            )
        embeds, pooled, mask = pipe.encode_prompt(
            prompt=prompts, device=self.device, dtype=torch.float32, max_sequence_length=self.max_text_tokens,
            **extra,
        )  # fmt: skip
        return {"prompt_embeds": embeds.float(), "prompt_attention_mask": mask.bool(),
                "pooled_prompt_embeds": pooled.float()}  # fmt: skip

    # --- image (image-to-video) ------------------------------------------------------------------
    def load_image_encoder(self) -> None:
        """Nothing beyond the VAE: the first frame's latents are the VAE's, and Llava (the text encoder)
        sees the frame when prompts are encoded."""

    @torch.no_grad()
    def encode_first_frames(
        self,
        vae: AutoencoderKLHunyuanVideo,
        images: list,
        num_frames: int,
        height: int,
        width: int,
        generator=None,
    ) -> Condition:
        """``image_latents`` [B, C, 1, h, w]: each image resized to ``height`` x ``width`` and encoded alone,
        the posterior mode times ``scaling_factor``, as ``HunyuanVideoImageToVideoPipeline.prepare_latents``
        takes it (the mode even with a generator, so ``generator`` is not used)."""
        if not self.image_to_video:
            raise ValueError(f"{self.model_path} is not an image-to-video model")
        pixels = VideoProcessor(vae_scale_factor=self.rules.spatial_factor).preprocess(
            images, height=height, width=width
        )
        pixels = pixels.to(self.device, vae.dtype)
        latents = [vae.encode(image[None, :, None]).latent_dist.mode() for image in pixels]
        return {"image_latents": torch.cat(latents).float() * vae.config.scaling_factor}

    def null_condition(self, like: Condition, empty: Condition | None = None) -> Condition:
        return self.empty_prompt_condition(like, empty)
