"""CogVideoX adapter (2B, 5B, 1.5): loads a diffusers-layout ``THUDM/CogVideoX-2b`` / ``-5b`` /
``CogVideoX1.5-5B`` directory (or the embedded tiny one).

Layout: ``transformer/``, ``vae/``, ``text_encoder/`` (T5), ``tokenizer/``, ``scheduler/``,
``model_index.json``. Text is encoded by ``CogVideoXPipeline``'s own prompt encoder (226 tokens, every
one attended, no mask), so the conditioning record is ``{"prompt_embeds": [B, 226, D]}``; the
unconditional input is the encoded empty prompt, as the pipeline's default negative prompt.
Latents are the VAE's posterior mode times ``scaling_factor`` (the pipeline divides by it before
decoding). The DiT takes latents frames-first ([B, F, C, H, W]); the adapter permutes, so the rest of
fastvideo keeps [B, C, T, H, W]. Rotary tables (5B, 1.5) are computed here as the pipeline does and
passed to the DiT; 2B's positions are sinusoidal, added inside the DiT.

The objective is DDPM v-prediction (:data:`OBJECTIVE`), carried in fastvideo's flow-matching terms
so that trainer, sampler and distiller need no special case. A DDPM state at timestep t,
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` (``a_t``: the scheduler's ``alphas_cumprod``, scaled-linear
betas with CogVideoX's SNR shift, rescaled to zero terminal SNR), is the flow state
``x_sigma = (1 - sigma) x0 + sigma noise`` scaled by ``1 / n``, with

    sigma = sqrt(1 - a_t) / (sqrt(a_t) + sqrt(1 - a_t)),   n = sqrt((1 - sigma)^2 + sigma^2).

``predict_velocity`` turns a flow state into the DDPM state (``x_t = x_sigma / n``), runs the DiT at
the integer timestep whose sigma it is (interpolated between timesteps for other sigmas) and turns
its v-prediction into the flow velocity ``noise - x0 = (2 sigma - 1) x_sigma / n^2 + v / n``. So:

* an Euler step between two timesteps' sigmas is exactly a DDIM step (eta 0), and Euler sampling
  over the DDIM timesteps equals ``CogVideoXPipeline`` with ``CogVideoXDDIMScheduler``;
* training draws integer timesteps uniformly, as diffusers' ``train_cogvideox_lora.py``, and weights
  the flow-velocity error by ``n^2``, which makes it exactly that script's loss (the v-prediction
  MSE, written there as an x0 error weighted by ``1 / (1 - a_t)``).

Image-to-video (a ``CogVideoXImageToVideoPipeline`` folder: the DiT's ``in_channels`` is twice the
VAE's latent channels) adds ``image_latents``: the first frame's latents (scaled as the pipeline
does) followed by zeros, concatenated to the noisy latents on channels.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, T5EncoderModel

from fastvideo.models.base import Condition, ModelAdapter, SamplingDefaults, VideoRules

OBJECTIVE = "v_prediction"


class NoiseLevels:
    """A DDPM schedule's timesteps as flow-matching noise levels (see the module docstring).

    ``sigmas[t]`` rises from about 0 (t = 0) to 1 (the last timestep, zero terminal SNR).
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        a = alphas_cumprod.double()
        self.sigmas = (1 - a).sqrt() / (a.sqrt() + (1 - a).sqrt())

    @classmethod
    def of_scheduler_config(cls, config: dict) -> NoiseLevels:
        return cls(CogVideoXDDIMScheduler.from_config(config).alphas_cumprod)

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise levels (float32) of integer timesteps."""
        return self.sigmas[timesteps.long().cpu()].float().to(timesteps.device)

    def timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The (float32) timesteps of noise levels: an integer where a sigma is a timestep's (to float32
        precision), else linearly interpolated between the two timesteps around it."""
        s = sigmas.detach().double().cpu()
        last = len(self.sigmas) - 1
        upper = torch.searchsorted(self.sigmas, s).clamp(1, last)
        low, high = self.sigmas[upper - 1], self.sigmas[upper]
        t = (upper - 1 + ((s - low) / (high - low)).clamp(0, 1)).clamp(0, last)
        nearest = t.round().long()
        exact = (self.sigmas[nearest] - s).abs() <= 1e-6
        return torch.where(exact, nearest.double(), t).float().to(sigmas.device)


def flow_scale(sigmas: torch.Tensor) -> torch.Tensor:
    """``n = sqrt((1 - sigma)^2 + sigma^2)``: the DDPM state is the flow state divided by it."""
    return ((1 - sigmas) ** 2 + sigmas**2).sqrt()


def rotary_tables(config, frames: int, height: int, width: int, device) -> tuple | None:
    """The RoPE (cos, sin) tables [N, head_dim] of a CogVideoX DiT (its ``config``) for latents of ``frames``
    x ``height`` x ``width``, as ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` makes them; None
    for a DiT without rotary positions (2B)."""
    if not config.use_rotary_positional_embeddings:
        return None
    p, p_t = config.patch_size, config.patch_size_t
    grid = (height // p, width // p)
    base_height, base_width = config.sample_height // p, config.sample_width // p
    if p_t is None:  # CogVideoX 1.0: the grid centre-cropped from the base size
        crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid, temporal_size=frames,
            device=device,
        )  # fmt: skip
    # CogVideoX 1.5: slices of the base grid
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim, crops_coords=None, grid_size=grid, temporal_size=-(-frames // p_t),
        grid_type="slice", max_size=(base_height, base_width), device=device,
    )  # fmt: skip


class CogVideoXAdapter(ModelAdapter):
    family = "cogvideox"
    rules = VideoRules(temporal_factor=4, spatial_factor=8, patch_size=2, temporal_patch=1)
    max_text_tokens = 226
    text_condition_keys = ("prompt_embeds",)
    objective = OBJECTIVE
    block_lists = ("transformer_blocks",)
    # The projections of the joint attention (diffusers' train_cogvideox_lora.py targets).
    lora_targets = "to_q,to_k,to_v,to_out.0"
    # CogVideoXPipeline's defaults: 50 steps, guidance 6; CogVideoX 1.0 videos play at 8 fps.
    sampling = SamplingDefaults(num_inference_steps=50, guidance_scale=6.0, fps=8.0)

    def __init__(
        self, model_path, *, device="cpu", dtype=torch.float32, vae_tiling: bool = False, expert: str = ""
    ):
        super().__init__(model_path, device=device, dtype=dtype, expert=expert)
        self.vae_tiling = vae_tiling
        config = self._config("transformer/config.json")
        if config.get("patch_size_t"):  # CogVideoX 1.5: latent frames in pairs
            self.rules = replace(self.rules, temporal_patch=int(config["patch_size_t"]))
        self._levels: NoiseLevels | None = None
        self._rope: dict = {}

    def _config(self, name: str) -> dict:
        path = self.model_path / name
        return json.loads(path.read_text()) if path.is_file() else {}

    # --- text- or image-to-video ------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self._config("vae/config.json").get("latent_channels", 16))

    @property
    def image_to_video(self) -> bool:
        """The DiT takes the first frame's latents beside the noisy ones (twice the VAE's channels)."""
        in_channels = self._config("transformer/config.json").get("in_channels", self.latent_channels)
        return in_channels == 2 * self.latent_channels

    @property
    def image_condition_keys(self) -> tuple[str, ...]:
        return ("image_latents",) if self.image_to_video else ()

    @property
    def pipeline_class_name(self) -> str:
        return "CogVideoXImageToVideoPipeline" if self.image_to_video else "CogVideoXPipeline"

    # --- noise levels ----------------------------------------------------------------------------
    def noise_levels(self) -> NoiseLevels:
        """The folder's DDPM schedule (its ``scheduler/`` config) as flow noise levels."""
        if self._levels is None:
            self._levels = NoiseLevels.of_scheduler_config(self._config("scheduler/scheduler_config.json"))
        return self._levels

    def pipeline_scheduler(self, num_steps: int) -> CogVideoXDDIMScheduler:
        """The folder's schedule as ``CogVideoXDDIMScheduler`` with ``num_steps`` timesteps set."""
        scheduler = CogVideoXDDIMScheduler.from_config(self._config("scheduler/scheduler_config.json"))
        scheduler.set_timesteps(num_steps)
        return scheduler

    native_schedulers = ("dpm",)

    def native_scheduler(self, kind: str, num_steps: int):
        """``dpm``: the folder's schedule as ``CogVideoXDPMScheduler`` (what CogVideoX-5b's examples sample
        with), ``num_steps`` timesteps set."""
        if kind != "dpm":
            raise ValueError(f"CogVideoX has no scheduler {kind!r}; choose dpm")
        scheduler = CogVideoXDPMScheduler.from_config(self._config("scheduler/scheduler_config.json"))
        scheduler.set_timesteps(num_steps)
        return scheduler

    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        """The noise levels of the DDIM timesteps (trailing spacing), then 0: Euler over them is the
        pipeline's DDIM when ``num_steps`` divides 1000 (DDIM steps from t to t - 1000 // num_steps,
        which for other counts is not the next timestep)."""
        timesteps = self.pipeline_scheduler(num_steps).timesteps
        return torch.cat([self.noise_levels().sigma(timesteps), torch.zeros(1)])

    def training_sigmas(self, generator: torch.Generator) -> torch.Tensor:
        """One noise level [1] for v-prediction training: an integer timestep drawn uniformly."""
        levels = self.noise_levels()
        return levels.sigma(torch.randint(0, len(levels.sigmas), (1,), generator=generator))

    def loss_weights(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Per-sample weights [B] of the flow-velocity MSE that make it the v-prediction MSE."""
        return flow_scale(sigmas.float()) ** 2

    # --- VAE -------------------------------------------------------------------------------------
    def load_vae(self) -> AutoencoderKLCogVideoX:
        vae = AutoencoderKLCogVideoX.from_pretrained(
            self.model_path, subfolder="vae", torch_dtype=torch.float32
        )
        if self.vae_tiling:
            vae.enable_tiling()
        return vae.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode_video(self, vae: AutoencoderKLCogVideoX, video: torch.Tensor) -> torch.Tensor:
        # The posterior mean, so preprocessing is deterministic (the training script samples it).
        latents = vae.encode(video.to(self.device, vae.dtype)).latent_dist.mode().float()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, vae: AutoencoderKLCogVideoX, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device, torch.float32) / vae.config.scaling_factor
        return vae.decode(latents.to(vae.dtype)).sample.float().clamp(-1, 1)

    # --- transformer -----------------------------------------------------------------------------
    def transformer_class(self) -> type[CogVideoXTransformer3DModel]:
        return CogVideoXTransformer3DModel

    def set_attention(self, transformer, sp_group=None, backend: str = "sdpa") -> None:
        from fastvideo.models.cogvideox_sp import (
            configure_cogvideox_attention,
            enable_cogvideox_sequence_parallel,
        )

        if sp_group is None:
            configure_cogvideox_attention(transformer, backend)
        else:
            enable_cogvideox_sequence_parallel(transformer, sp_group, backend)

    def rotary_tables(self, config, frames: int, height: int, width: int, device) -> tuple | None:
        """:func:`rotary_tables`, kept for the last shape (every step of a run has the same)."""
        key = (frames, height, width, str(device))
        if key not in self._rope:
            self._rope = {key: rotary_tables(config, frames, height, width, device)}
        return self._rope[key]

    def predict_velocity(self, transformer, noisy_latents, sigmas, cond: Condition):
        scale = flow_scale(sigmas.float()).view(-1, 1, 1, 1, 1)
        ddpm_latents = (noisy_latents.float() / scale).to(noisy_latents.dtype)
        v = self.predict_v(transformer, ddpm_latents, self.noise_levels().timesteps(sigmas), cond)
        s = sigmas.float().view(-1, 1, 1, 1, 1)
        return ((2 * s - 1) * noisy_latents.float() / scale**2 + v.float() / scale).to(v.dtype)

    def predict_v(self, transformer, latents: torch.Tensor, timesteps: torch.Tensor, cond: Condition):
        """The DiT's own output (v-prediction) for DDPM-state latents [B, C, T, H, W] at ``timesteps`` [B]:
        what ``CogVideoXPipeline``'s transformer call returns, in fastvideo's layout."""
        hidden_states = latents.permute(0, 2, 1, 3, 4)
        if "image_latents" in cond:
            image = cond["image_latents"].to(latents.dtype).permute(0, 2, 1, 3, 4)
            hidden_states = torch.cat([hidden_states, image], dim=2)
        config = transformer.config
        frames, height, width = hidden_states.shape[1], hidden_states.shape[3], hidden_states.shape[4]
        extra = {}
        if config.ofs_embed_dim is not None:  # CogVideoX 1.5 image-to-video, as its pipeline passes it
            extra["ofs"] = hidden_states.new_full((1,), 2.0)
        out = transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=cond["prompt_embeds"],
            timestep=timesteps.to(latents.device),
            image_rotary_emb=self.rotary_tables(config, frames, height, width, latents.device),
            return_dict=False,
            **extra,
        )[0]
        return out.permute(0, 2, 1, 3, 4)

    def pipeline_layout(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] <-> CogVideoXPipeline's frames-first [B, T, C, H, W]."""
        return x.permute(0, 2, 1, 3, 4)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Noise [B, C, T, H, W] drawn as ``CogVideoXPipeline`` draws it (frames-first)."""
        b, c, t, h, w = shape
        return torch.randn((b, t, c, h, w), generator=generator, dtype=torch.float32).permute(0, 2, 1, 3, 4)

    # --- image (image-to-video) ------------------------------------------------------------------
    def load_image_encoder(self) -> None:
        """Nothing to load: CogVideoX conditions on the first frame through its VAE alone."""

    @torch.no_grad()
    def encode_first_frames(
        self,
        vae: AutoencoderKLCogVideoX,
        images: list,
        num_frames: int,
        height: int,
        width: int,
        generator=None,
    ) -> Condition:
        """``image_latents`` [B, C, T, h, w]: each image resized to ``height`` x ``width``, encoded as one
        frame, scaled by the VAE's ``scaling_factor`` (its inverse where the VAE says ``invert_scale_latents``,
        CogVideoX 1.5) and followed by zero latent frames, as ``CogVideoXImageToVideoPipeline.prepare_latents``
        does. With ``generator`` the latents are drawn from the posterior with it, as the pipeline draws them
        (sampling); without, the posterior mode (preprocessing)."""
        pixels = VideoProcessor(vae_scale_factor=self.rules.spatial_factor).preprocess(
            images, height=height, width=width
        )
        pixels = pixels.to(self.device, vae.dtype)
        latents = []
        for image in pixels:  # one at a time, as the pipeline draws them from the generator
            posterior = vae.encode(image[None, :, None]).latent_dist
            latents.append(posterior.sample(generator) if generator is not None else posterior.mode())
        first = torch.cat(latents).float()
        scale = vae.config.scaling_factor
        first = first / scale if vae.config.get("invert_scale_latents", False) else first * scale
        frames = self.rules.latent_shape(num_frames, height, width, 1)[1]
        # (CogVideoX 1.5's pipeline repeats the first frame ahead when the latent frames are odd; its frame
        # rule here keeps them even.)
        padding = first.new_zeros(*first.shape[:2], frames - 1, *first.shape[3:])
        return {"image_latents": torch.cat([first, padding], dim=2)}

    # --- text ------------------------------------------------------------------------------------
    def text_classes(self) -> tuple[type, type]:
        return AutoTokenizer, T5EncoderModel

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Condition:
        embeds = self.text_pipeline()._get_t5_prompt_embeds(
            prompt=prompts, max_sequence_length=self.max_text_tokens, device=self.device, dtype=torch.float32
        )
        return {"prompt_embeds": embeds}

    def null_condition(self, like: Condition, empty: Condition | None = None) -> Condition:
        return self.empty_prompt_condition(like, empty)
