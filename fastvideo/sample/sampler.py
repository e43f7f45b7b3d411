"""Text-to-video sampling with sequence parallelism over every rank, for any family with an adapter.

    torchrun --nproc_per_node 2 fastvideo/sample/sample_t2v.py --model_type wan --model_path data/tiny-wan \
        --prompts "a red circle moving right"
    python fastvideo/sample/sample_t2v.py --model_type mochi --prompt_path prompts.txt --seeds 0,1

Every rank holds the whole DiT and runs every step on its share of the tokens (Ulysses SP over the
world group), so N GPUs cut one video's latency. Per prompt and seed:

1. noise drawn in float32 from ``torch.Generator("cpu").manual_seed(seed)`` exactly as the family's
   diffusers pipeline draws it for that generator (``adapter.initial_noise``: [1, C, T, H/8, W/8],
   CogVideoX frames-first); the same generator then serves whatever else the pipeline draws from it
   (CogVideoX image-to-video: the first frame's latents, before the noise; a stochastic scheduler's
   steps);
2. Euler steps over the scheduler's noise levels: ``euler`` is the family's default schedule
   (Mochi: MochiPipeline's linear-quadratic one; Wan: FlowMatchEulerDiscreteScheduler with the
   folder's flow shift; CogVideoX: its DDIM timesteps), ``pcm_linear_quadratic`` a distilled model's
   ``PCMFlowScheduler`` grid (read from the model folder, ``--linear_threshold`` / ``--linear_range``
   override it); or ``dpm`` (CogVideoX): its pipeline's ``CogVideoXDPMScheduler`` stepped natively
   (``fastvideo.sample.denoise.scheduler_denoise``); classifier-free guidance against the encoded
   ``--negative_prompt`` as diffusers does (steps, guidance, negative prompt and fps default to the
   family's ``adapter.sampling``);
3. VAE decode with tiling (job i is decoded by rank ``i % world``), one mp4 per prompt and seed.

A two-expert folder (Wan 2.2 A14B) samples with both experts, switched where ``WanPipeline``
switches (``fastvideo.models.experts``); an image-to-video folder (Wan 2.1 I2V, CogVideoX-5b-I2V,
HunyuanVideo-I2V) takes the first frame from ``--image`` and is conditioned on it as its pipeline is
(HunyuanVideo-I2V's text encoder sees the image too, and sampling starts from the pipeline's mix of
noise and the image's latents, ``adapter.initial_latents``).

``Sampler`` is also the in-process API the gradio demo uses (``generate``, ``decode``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from fastvideo.cli import launch, parse_config
from fastvideo.io import atomic_torch_save
from fastvideo.media.video import write_video
from fastvideo.models import get_adapter_class
from fastvideo.models.attention import BACKENDS, resolve_backend
from fastvideo.parallel.process_group import DistInfo
from fastvideo.sample.denoise import euler_denoise, scheduler_denoise

SCHEDULERS = ("auto", "euler", "pcm_linear_quadratic", "dpm")
NO_PROMPTS = "no prompts: pass --prompts 'a|b' or --prompt_path FILE"
EMBED_CACHE = 32


@dataclass
class SampleConfig:
    model_type: str = "mochi"
    model_path: str = "data/tiny-mochi"
    """Diffusers pipeline folder (a fine-tuning or distillation output folder is one)."""
    prompts: str = ""
    """Prompts separated by --prompt_separator."""
    prompt_path: str = ""
    """A text file with one prompt per line (added to --prompts)."""
    prompt_separator: str = "|"
    image: str = ""
    """The first frame (an image file) of every video: image-to-video folders need it, others refuse it."""
    negative_prompt: str | None = None
    """Default: the family's (empty for Mochi and the tiny Wan)."""
    num_frames: int = 25
    height: int = 64
    width: int = 96
    num_inference_steps: int | None = None
    """Default: the family's (Mochi 64, Wan 50)."""
    guidance_scale: float | None = None
    """Classifier-free guidance; default with euler the family's (Mochi 4.5, Wan 5.0), 1.0 with
    pcm_linear_quadratic (guidance is distilled in)."""
    seed: int = 0
    seeds: str = ""
    """Several seeds, e.g. '0,1,2' (overrides --seed); one video per prompt and seed."""
    scheduler_type: str = "auto"
    """euler | pcm_linear_quadratic | dpm | auto (pcm when the model folder's scheduler is PCMFlowScheduler,
    else euler). dpm: CogVideoX's CogVideoXDPMScheduler, stepped as CogVideoXPipeline steps it."""
    linear_threshold: float | None = None
    """PCM grid: linear-quadratic threshold (default: the model folder's scheduler config)."""
    linear_range: float | None = None
    """PCM grid: fraction of linear steps (default: the model folder's scheduler config)."""
    transformer_path: str = ""
    """A diffusers transformer folder to use instead of MODEL_PATH/transformer (e.g. .../transformer_ema);
    in a two-expert folder (Wan 2.2 A14B) it replaces the high-noise expert."""
    lora_path: str = ""
    """A diffusers-format LoRA folder (default: MODEL_PATH/lora when present; a two-expert folder's
    low-noise expert takes MODEL_PATH/lora_2)."""
    lora_scale: float | None = None
    """LoRA scale; default alpha/rank from the folder's fastvideo_lora.json, else 1."""
    output_path: str = "outputs/samples"
    fps: float | None = None
    """Default: the family's (Mochi 30, Wan 16)."""
    dtype: str = "auto"
    """bf16 | fp32 | auto (bf16 on GPU, fp32 on CPU)."""
    save_latents: bool = False
    """Also write each video's final latents as .pt (for exact comparisons)."""
    attention_backend: str = "auto"
    """auto (flash-attn on CUDA when it is installed, else sdpa), sdpa or flash."""

    def __post_init__(self):
        if self.scheduler_type not in SCHEDULERS:
            raise ValueError(
                f"--scheduler_type must be one of {', '.join(SCHEDULERS)}, got {self.scheduler_type!r}"
            )
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError("--num_inference_steps must be >= 1")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError("--dtype must be auto, bf16 or fp32")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"--attention_backend must be one of {', '.join(BACKENDS)}")

    @property
    def prompt_list(self) -> list[str]:
        prompts = [p.strip() for p in self.prompts.split(self.prompt_separator)] if self.prompts else []
        if self.prompt_path:
            prompts += Path(self.prompt_path).read_text(encoding="utf-8").splitlines()
        return [p.strip() for p in prompts if p.strip()]

    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",") if s.strip()] if self.seeds else [self.seed]


@dataclass
class Request:
    """One video to generate; the fields a user may change between videos (the demo's controls)."""

    prompt: str
    seed: int = 0
    negative_prompt: str = ""
    num_frames: int = 25
    height: int = 64
    width: int = 96
    num_inference_steps: int = 64
    guidance_scale: float | None = None
    scheduler_type: str = "auto"
    image: str = ""
    """The first frame's image file (image-to-video folders)."""


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


class Sampler:
    """Loads a pipeline folder once; ``generate(request)`` gives latents, ``decode`` gives pixels."""

    def __init__(self, cfg: SampleConfig, dist_info: DistInfo | None = None):
        self.dist = dist_info or DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        device = self.dist.device
        self.dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
            cfg.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
        )
        self.model_path = Path(cfg.model_path)
        check_pipeline_folder(self.model_path)
        self.attention_backend = resolve_backend(cfg.attention_backend, device)
        self.adapter = get_adapter_class(cfg.model_type)(self.model_path, device=device, dtype=self.dtype)
        self.cfg = cfg = with_family_defaults(cfg, self.adapter.sampling)
        self.transformer = self.load_transformer()
        self.adapter.load_text_encoder()
        if self.adapter.image_to_video:
            self.adapter.load_image_encoder()
        self.folder_pcm = self.load_pcm_scheduler()
        self.vae = None
        self._embeds: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()

    # --- loading ---------------------------------------------------------------------------------
    def load_transformer(self) -> torch.nn.Module:
        """The folder's DiT, or (a two-expert folder, Wan 2.2 A14B) both behind ``NoiseExperts``."""
        experts = self.adapter.expert_folders()
        if not experts:
            return self.load_dit("transformer", "lora")
        from fastvideo.models.experts import NoiseExperts

        high = self.load_dit(experts["high"], "lora")
        low = self.load_dit(experts["low"], "lora_2")
        return NoiseExperts(high, low, self.adapter.boundary_ratio())

    def load_dit(self, folder: str, lora_folder: str) -> torch.nn.Module:
        """One DiT from ``folder`` (``--transformer_path`` replaces ``transformer/``), with the LoRA of
        ``lora_folder`` (``--lora_path`` replaces ``lora/``) when there is one, ready to sample."""
        cfg = self.cfg
        first = folder == "transformer"
        path = Path(cfg.transformer_path) if cfg.transformer_path and first else self.model_path / folder
        transformer = self.adapter.transformer_class().from_pretrained(path, torch_dtype=self.dtype)
        lora = Path(cfg.lora_path) if cfg.lora_path and first else self.model_path / lora_folder
        if (cfg.lora_path and first) or (lora / "pytorch_lora_weights.safetensors").is_file():
            self.apply_lora(transformer, lora)
        transformer = transformer.to(self.dist.device).eval().requires_grad_(False)
        sp_group = dist.group.WORLD if self.dist.world_size > 1 else None
        self.adapter.set_attention(transformer, sp_group, self.attention_backend)
        return transformer

    def apply_lora(self, transformer: torch.nn.Module, folder: Path) -> None:
        if not (folder / "pytorch_lora_weights.safetensors").is_file():
            raise FileNotFoundError(f"no pytorch_lora_weights.safetensors in {folder}")
        scale = self.cfg.lora_scale
        meta = folder / "fastvideo_lora.json"
        if scale is None:
            info = json.loads(meta.read_text()) if meta.is_file() else {}
            scale = info["alpha"] / info["rank"] if "alpha" in info and "rank" in info else 1.0
        transformer.load_lora_adapter(
            str(folder),
            weight_name="pytorch_lora_weights.safetensors",
            prefix="transformer",
            adapter_name="lora",
        )
        transformer.set_adapters(["lora"], weights=[scale])
        if self.dist.is_main:
            print(f"LoRA {folder} at scale {scale:g}")

    # --- one video -------------------------------------------------------------------------------
    def resolve(self, request: Request) -> tuple[str, torch.Tensor | None, float]:
        """Check ``request`` against the family's rules; return (scheduler, sigmas, guidance); sigmas are
        None for a pipeline scheduler (``adapter.native_schedulers``), which has its own."""
        rules = self.adapter.rules
        problems = [
            p
            for p in (rules.frame_error(request.num_frames), rules.size_error(request.height, request.width))
            if p
        ]
        if problems:
            raise ValueError("; ".join(problems))
        if request.num_inference_steps < 1:
            raise ValueError("the number of steps must be at least 1")
        if self.adapter.image_to_video and not request.image:
            raise ValueError(
                f"{self.model_path} is an image-to-video model: give the first frame (--image FILE)"
            )
        if request.image and not self.adapter.image_to_video:
            raise ValueError(f"{self.model_path} is a text-to-video model: it takes no --image")
        if request.image and not Path(request.image).is_file():
            raise ValueError(f"--image {request.image}: no such file")
        kind = request.scheduler_type
        if kind == "auto":
            kind = "pcm_linear_quadratic" if self.folder_pcm is not None else "euler"
        if kind == "euler":
            sigmas = self.adapter.default_sigmas(request.num_inference_steps)
        elif kind == "pcm_linear_quadratic":
            scheduler = self.pcm_scheduler()
            limit = scheduler.config.num_euler_timesteps
            if request.num_inference_steps > limit:
                raise ValueError(
                    f"pcm_linear_quadratic takes at most {limit} steps (its grid), got {request.num_inference_steps}"
                )
            scheduler.set_timesteps(request.num_inference_steps)
            sigmas = scheduler.sigmas
        elif kind in self.adapter.native_schedulers:
            sigmas = None
        elif kind in SCHEDULERS:
            raise ValueError(
                f"--scheduler_type {kind} is not a {self.adapter.family} scheduler; choose euler or "
                f"pcm_linear_quadratic{''.join(f' or {k}' for k in self.adapter.native_schedulers)}"
            )
        else:
            raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")
        guidance = request.guidance_scale
        if guidance is None:
            guidance = 1.0 if kind == "pcm_linear_quadratic" else self.adapter.sampling.guidance_scale
        return kind, sigmas, guidance

    def load_pcm_scheduler(self):
        """The PCM scheduler to sample with: the folder's (None when it has another) with the flags' overrides."""
        config = self.model_path / "scheduler" / "scheduler_config.json"
        if not config.is_file() or json.loads(config.read_text()).get("_class_name") != "PCMFlowScheduler":
            return None
        from fastvideo.schedulers import PCMFlowScheduler

        return self.with_overrides(PCMFlowScheduler.from_pretrained(self.model_path / "scheduler"))

    def with_overrides(self, scheduler):
        overrides = {k: v for k, v in (("linear_threshold", self.cfg.linear_threshold),
                                       ("linear_range", self.cfg.linear_range)) if v is not None}  # fmt: skip
        return type(scheduler).from_config({**scheduler.config, **overrides}) if overrides else scheduler

    def pcm_scheduler(self):
        """The folder's PCM scheduler, or a default one (with the overrides) for a folder without."""
        from fastvideo.schedulers import PCMFlowScheduler

        return self.folder_pcm or self.with_overrides(PCMFlowScheduler())

    def encode(self, prompt: str, image: str = "") -> dict[str, torch.Tensor]:
        """The prompt's conditioning record, cached for the last EMBED_CACHE prompts (a long-running
        demo stays bounded); embeddings in the model's dtype. A family whose text encoder sees the first
        frame (``adapter.prompt_sees_image``) encodes the prompt with ``image`` (a file; without one, with
        the family's unconditional image)."""
        key = (prompt, image if self.adapter.prompt_sees_image else "")
        if key not in self._embeds:
            if key[1]:
                from PIL import Image

                with Image.open(image) as frame:
                    cond = self.adapter.encode_prompts([prompt], images=[frame.convert("RGB")])
            else:
                cond = self.adapter.encode_prompts([prompt])
            self._embeds[key] = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in cond.items()}
            while len(self._embeds) > EMBED_CACHE:
                self._embeds.popitem(last=False)
        self._embeds.move_to_end(key)
        return self._embeds[key]

    def first_frame(
        self, request: Request, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Image-to-video: the conditioning of ``request.image`` as the first frame ({} otherwise); a family
        whose pipeline draws it from the VAE posterior draws it from ``generator`` (CogVideoX)."""
        if not request.image:
            return {}
        from PIL import Image

        with Image.open(request.image) as image:
            image = image.convert("RGB")
        cond = self.adapter.encode_first_frames(
            self.load_vae(), [image], request.num_frames, request.height, request.width, generator=generator
        )
        return {k: v.to(self.dtype) for k, v in cond.items()}

    def load_vae(self):
        if self.vae is None:
            self.vae = self.adapter.load_vae()
        return self.vae

    def initial_noise(self, request: Request, generator: torch.Generator) -> torch.Tensor:
        shape = self.adapter.rules.latent_shape(
            request.num_frames, request.height, request.width, self.adapter.latent_channels
        )
        return self.adapter.initial_noise((1, *shape), generator).to(self.dist.device)

    def generate(self, request: Request, on_step=None) -> torch.Tensor:
        """Final latents ``[1, C, T, h, w]`` (float32) for ``request``; every rank must call it."""
        kind, sigmas, guidance = self.resolve(request)
        # One generator per video, used in the order the family's pipeline uses its own: the first frame's
        # latents (CogVideoX image-to-video), the noise, then any stochastic step.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        image = self.first_frame(request, generator)
        cond = {**self.encode(request.prompt, request.image), **image}
        negative = {**self.encode(request.negative_prompt), **image} if guidance > 1.0 else None
        noise = self.adapter.initial_latents(self.initial_noise(request, generator), cond)
        if sigmas is None:
            return scheduler_denoise(
                self.adapter, self.transformer, noise, self.adapter.native_scheduler(kind, request.num_inference_steps),
                cond, guidance=guidance, negative=negative, generator=generator, on_step=on_step,
                model_dtype=self.dtype,
            )  # fmt: skip
        return euler_denoise(
            self.adapter, self.transformer, noise, sigmas, cond,
            guidance=guidance, negative=negative, on_step=on_step, model_dtype=self.dtype,
        )  # fmt: skip

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels ``[3, F, H, W]`` in [-1, 1] of one video's latents (this rank alone)."""
        return self.adapter.decode_latents(self.load_vae(), latents)[0].cpu()

    # --- the command line ------------------------------------------------------------------------
    def run(self) -> list[Path]:
        cfg = self.cfg
        prompts = cfg.prompt_list
        if not prompts:
            raise ValueError(NO_PROMPTS)
        shared = {f.name: getattr(cfg, f.name) for f in fields(Request) if f.name not in ("prompt", "seed")}
        jobs = [Request(prompt=p, seed=s, **shared) for p in prompts for s in cfg.seed_list]
        kind, _, guidance = self.resolve(jobs[0])
        out = Path(cfg.output_path)
        if self.dist.is_main:
            print(f"{len(jobs)} video(s): {kind}, {cfg.num_inference_steps} steps, guidance {guidance:g}, "
                  f"{cfg.num_frames}x{cfg.height}x{cfg.width}, SP over {self.dist.world_size} rank(s) -> {out}")  # fmt: skip
        bar = tqdm(
            total=len(jobs) * cfg.num_inference_steps,
            desc="sampling",
            unit="step",
            disable=not self.dist.is_main,
        )
        written = []
        for i, job in enumerate(jobs):
            self.dist.barrier()  # a rank still decoding the previous video would count as denoising time
            start = time.perf_counter()
            latents = self.generate(job, on_step=lambda _: bar.update())
            denoise_s = time.perf_counter() - start
            if i % self.dist.world_size != self.dist.rank:
                continue
            path = out / f"{i:03d}-{slug(job.prompt)}-seed{job.seed}.mp4"
            write_video(path, self.decode(latents), fps=cfg.fps)
            if cfg.save_latents:
                atomic_torch_save(latents.cpu(), path.with_suffix(".pt"))
            total_s = time.perf_counter() - start
            tqdm.write(f"{path} ({denoise_s:.2f} s denoising, {total_s:.2f} s with decoding): {job.prompt}")
            written.append(path)
        bar.close()
        self.dist.barrier()
        return written


def with_family_defaults(cfg: SampleConfig, sampling) -> SampleConfig:
    """``cfg`` with what it leaves unset (None) taken from the family's ``SamplingDefaults``."""
    defaults = {
        "num_inference_steps": sampling.num_inference_steps,
        "negative_prompt": sampling.negative_prompt,
        "fps": sampling.fps,
    }
    return replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})


def preflight(argv: list[str], world_size: int, single_node: bool = True) -> None:
    """What ``python -m fastvideo.launch`` checks once before starting the workers (ValueError)."""
    cfg = parse_config(SampleConfig, argv)
    check_pipeline_folder(Path(cfg.model_path))
    if not cfg.prompt_list:
        raise ValueError(NO_PROMPTS)


def check_pipeline_folder(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")


def sample(cfg: SampleConfig, dist_info: DistInfo) -> None:
    Sampler(cfg, dist_info).run()


def main(argv: list[str] | None = None) -> int:
    return launch(SampleConfig, sample, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
