"""The contract every model-family adapter fulfils.

An adapter has one job: it knows a family's diffusers directory layout, how that family encodes
text and video, its frame/size rules, its timestep convention, its repeated blocks and its
defaults (LoRA targets, sampling). It holds no training loop and no distributed setup.
Components are loaded one at a time (``load_vae``, ``load_text_encoder``) so a preprocessing pass
holds only what it needs: the VAE pass never has the text encoder in memory and vice versa.

The conditioning record
-----------------------
What a sample is conditioned on is a plain dict of named tensors (:data:`Condition`), batched along
dim 0: ``{"prompt_embeds": [B, L, D], "prompt_attention_mask": [B, L]}`` for Mochi,
``{"prompt_embeds": [B, 512, D]}`` for Wan; a family that needs more (a pooled CLIP embedding,
image latents) adds names. ``encode_prompts`` makes it, preprocessing stores each tensor
(``fastvideo.dataset.layout``), the dataset reads it back, and the trainer, distiller and sampler
hand it to ``predict_velocity`` untouched. ``condition_keys`` lists the names.

The unconditional input (caption dropout, classifier-free guidance) is ``null_condition``: Mochi
trains and samples against a zero embedding with an empty mask (as FastVideo's Mochi and genmo's
trainer), Wan against the encoded empty prompt, which preprocessing stores once per dataset.

Noise-level experts
-------------------
A pipeline folder may hold two DiTs split by noise level (Wan 2.2 A14B): ``transformer/`` denoises
noise levels ``sigma >= boundary_ratio`` (its timestep ``1000 * sigma`` at or above
``boundary_ratio * 1000``, as ``WanPipeline`` switches), ``transformer_2/`` the levels below.
``model_index.json`` says so (``transformer_2`` present, ``boundary_ratio`` set). An adapter made
with ``expert="high"`` or ``"low"`` works on that one DiT: ``transformer_folder`` names its folder
and ``sigma_range`` its noise levels; without ``expert`` it is the folder's first DiT.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Condition = dict[str, torch.Tensor]
"""Named conditioning tensors of a batch (dim 0) or, in the dataset, of one sample."""


@dataclass(frozen=True)
class VideoRules:
    """Shape rules a family imposes on the pixel-space input."""

    temporal_factor: int  # VAE temporal compression: frames must be temporal_factor*k + 1
    spatial_factor: int  # VAE spatial compression
    patch_size: int  # DiT spatial patch size (height/width of the latent must divide by it)
    temporal_patch: int = 1  # DiT temporal patch size (latent frames must divide by it)

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * self.patch_size

    def frame_error(self, num_frames: int) -> str | None:
        """A message naming valid frame counts, or None when ``num_frames`` is valid."""
        valid = self.valid_frames(num_frames + self.frame_step)
        if num_frames in valid:
            return None
        below = max([v for v in valid if v < num_frames], default=valid[0])
        above = min([v for v in valid if v > num_frames], default=below)
        rule = f"{self.temporal_factor}k+1"
        if self.temporal_patch > 1:
            rule += f" with k+1 divisible by {self.temporal_patch} (the DiT's temporal patch)"
        shown = ", ".join(str(v) for v in valid[:3])
        return f"NUM_FRAMES={num_frames} is not valid: frames must be {rule} ({shown}, ...); nearest valid values: {below} or {above}"

    @property
    def frame_step(self) -> int:
        return self.temporal_factor * self.temporal_patch

    def valid_frames(self, up_to: int) -> list[int]:
        """Every valid frame count up to ``up_to`` (inclusive), ascending."""
        first = self.temporal_factor * (self.temporal_patch - 1) + 1
        return list(range(first, up_to + 1, self.frame_step)) or [first]

    def size_error(self, height: int, width: int) -> str | None:
        """A message naming valid sizes, or None when ``height`` x ``width`` is valid."""
        m = self.size_multiple
        bad = [(name, v) for name, v in (("HEIGHT", height), ("WIDTH", width)) if v < m or v % m]
        if not bad:
            return None
        parts = [f"{name}={v} (try {max(m, v // m * m)} or {max(m, v // m * m) + m})" for name, v in bad]
        return (
            f"{', '.join(parts)}: height and width must be multiples of {m} "
            f"(VAE downsampling {self.spatial_factor} x patch size {self.patch_size})"
        )

    def latent_shape(self, num_frames: int, height: int, width: int, channels: int) -> tuple[int, ...]:
        return (
            channels,
            (num_frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )


def component_fingerprint(model_path: str | Path, components: tuple[str, ...]) -> str:
    """Changes when the named components of a diffusers folder change (e.g. a rebuilt tiny model).

    sha256 of their JSON configs and the names and sizes of their other files, so it costs no pass
    over the weights.
    """
    digest = hashlib.sha256()
    for sub in components:
        folder = Path(model_path) / sub
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not path.is_file():
                continue
            digest.update(f"{sub}/{path.name}:{path.stat().st_size}".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


EXPERT_FOLDERS = {"high": "transformer", "low": "transformer_2"}
"""The noise-level experts of a two-DiT folder and their folders: ``high`` takes ``sigma >= boundary``."""


def boundary_ratio(model_path: str | Path) -> float | None:
    """A two-expert folder's ``boundary_ratio`` (its ``model_index.json`` lists ``transformer_2`` and sets
    it), else None."""
    index = Path(model_path) / "model_index.json"
    values = json.loads(index.read_text()) if index.is_file() else {}
    second = values.get("transformer_2")
    ratio = values.get("boundary_ratio")
    has_second = isinstance(second, list) and bool(second) and second[0] is not None
    return float(ratio) if has_second and ratio is not None else None


@dataclass(frozen=True)
class SamplingDefaults:
    """What a family samples with unless told otherwise (the sampler's and the demo's defaults)."""

    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str = ""
    fps: float = 30.0


class ModelAdapter(abc.ABC):
    """Loads one family's diffusers-layout directory and encodes/decodes for it."""

    family: str
    rules: VideoRules
    latent_channels: int
    max_text_tokens: int
    text_condition_keys: tuple[str, ...]
    """The text part of the conditioning record (what ``encode_prompts`` returns)."""
    objective: str = "flow_velocity"
    """How the family trains (``fastvideo.training.objectives``): ``flow_velocity`` (Mochi, Wan,
    HunyuanVideo) or ``v_prediction`` (CogVideoX: DDPM v-prediction, carried in flow terms by its adapter,
    which then also has ``training_sigmas`` and ``loss_weights``)."""
    timesteps_reversed: bool = False
    """The DiT sees ``1000 * (1 - sigma)`` and predicts ``-v`` (Mochi) rather than ``1000 * sigma`` and
    ``v``: the convention of the schedulers saved with the family's pipelines."""
    block_lists: tuple[str, ...]
    """Attribute names of the DiT's repeated block lists: FSDP units, activation checkpointing,
    ``--compile`` and the memory probe take them in this order."""
    lora_targets: str
    """Default ``--lora_target_modules``: module names inside the blocks (comma-separated)."""
    pipeline_class_name: str
    """The diffusers pipeline of this family: saves and loads LoRA, runs exported folders."""
    sampling: SamplingDefaults
    image_to_video: bool = False
    """The folder's DiT is conditioned on a first frame (``encode_first_frames``)."""
    image_condition_keys: tuple[str, ...] = ()
    """The image part of the record (image-to-video folders), made from each clip's first frame."""
    prompt_sees_image: bool = False
    """The text encoder sees the first frame too (HunyuanVideo image-to-video's Llava): ``encode_prompts``
    then takes ``images=`` (one PIL image per prompt), so the text part of the record depends on the image."""

    @property
    def condition_keys(self) -> tuple[str, ...]:
        """The names in this folder's conditioning record: text, then image."""
        return (*self.text_condition_keys, *self.image_condition_keys)

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype=torch.float32,
        expert: str = "",
    ):
        self.model_path = Path(model_path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.expert = expert
        if expert and expert not in EXPERT_FOLDERS:
            raise ValueError(f"expert must be one of {', '.join(EXPERT_FOLDERS)}, got {expert!r}")
        if expert and self.boundary_ratio() is None:
            raise ValueError(
                f"{self.model_path} holds one DiT (its model_index.json has no transformer_2 and boundary_ratio); "
                "--expert is for two-expert folders such as Wan 2.2 A14B"
            )

    # --- noise-level experts -----------------------------------------------------------------------
    def boundary_ratio(self) -> float | None:
        """The noise level where ``transformer_2`` takes over, or None for a one-DiT folder."""
        return boundary_ratio(self.model_path)

    def expert_folders(self) -> dict[str, str]:
        """``{"high": "transformer", "low": "transformer_2"}`` for a two-expert folder, else ``{}``."""
        return dict(EXPERT_FOLDERS) if self.boundary_ratio() is not None else {}

    @property
    def transformer_folder(self) -> str:
        """The folder of the DiT this adapter works on (``expert``'s, else ``transformer``)."""
        return EXPERT_FOLDERS[self.expert] if self.expert else "transformer"

    def sigma_range(self) -> tuple[float, float]:
        """The noise levels ``[low, high]`` this adapter's DiT denoises (all of (0, 1] without ``expert``)."""
        if not self.expert:
            return (0.0, 1.0)
        boundary = self.boundary_ratio()
        return (boundary, 1.0) if self.expert == "high" else (0.0, boundary)

    # --- components --------------------------------------------------------------------------------
    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def transformer_config(self) -> dict:
        """The DiT's config (``transformer_folder``'s ``config.json``), without loading weights."""
        return json.loads((self.model_path / self.transformer_folder / "config.json").read_text())

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Every repeated block, list after list: the unit of FSDP sharding and activation checkpointing."""
        return [block for name in self.block_lists for block in getattr(transformer, name)]

    @abc.abstractmethod
    def transformer_class(self) -> type[torch.nn.Module]: ...

    @abc.abstractmethod
    def load_vae(self) -> torch.nn.Module: ...

    @abc.abstractmethod
    def text_classes(self) -> tuple[type, type]:
        """The (tokenizer, text encoder) classes of the folder's ``tokenizer/`` and ``text_encoder/``."""

    def load_text_encoder(self) -> None:
        """Load the tokenizer and text encoder (kept on the adapter until ``unload_text_encoder``), in a
        pipeline holding only them, so prompts are encoded by the family pipeline's own code."""
        tokenizer_cls, encoder_cls = self.text_classes()
        tokenizer = tokenizer_cls.from_pretrained(self.model_path, subfolder="tokenizer")
        encoder = encoder_cls.from_pretrained(
            self.model_path, subfolder="text_encoder", torch_dtype=self.dtype
        )
        encoder = encoder.to(self.device).eval().requires_grad_(False)
        self._text_pipe = self.pipeline_class()(
            tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None, transformer=None
        )

    def unload_text_encoder(self) -> None:
        self._text_pipe = None

    def text_pipeline(self):
        """The pipeline ``load_text_encoder`` made (RuntimeError before it)."""
        if getattr(self, "_text_pipe", None) is None:
            raise RuntimeError("call load_text_encoder() before encode_prompts()")
        return self._text_pipe

    # --- conditioning ------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Condition:
        """The conditioning record of ``prompts``, batched: ``{name: [len(prompts), ...]}``."""

    @abc.abstractmethod
    def null_condition(self, like: Condition, empty: Condition | None) -> Condition:
        """The unconditional input for a batch shaped like ``like``.

        ``empty`` is the encoded empty prompt (one sample, no batch dim) when the caller has it
        (preprocessing stores it); a family that needs it raises ValueError without it.
        """

    def empty_prompt_condition(self, like: Condition, empty: Condition | None) -> Condition:
        """``null_condition`` of a family whose unconditional input is the encoded empty prompt (Wan, CogVideoX,
        HunyuanVideo): ``empty``'s tensors repeated over ``like``'s batch; an image part of ``like`` stays."""
        if empty is None:
            raise ValueError(
                f"{self.family}'s unconditional input is the encoded empty prompt, and this dataset does not hold "
                "it; re-run `bash scripts/finetune_data_gen.sh` (it writes null_condition.pt)"
            )
        batch = like["prompt_embeds"].shape[0]
        device = like["prompt_embeds"].device
        text = {k: v.to(device, like[k].dtype).expand(batch, *v.shape).clone() for k, v in empty.items()}
        return {**like, **text}

    def load_image_encoder(self) -> None:
        """Load what ``encode_first_frames`` needs (image-to-video folders)."""
        raise ValueError(f"{self.model_path} is not an image-to-video model")

    def encode_first_frames(
        self,
        vae,
        images: list,
        num_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
    ) -> Condition:
        """The image part of the record for first frames (PIL images) of ``num_frames``-frame clips.

        ``generator``: sampling passes its video's generator, for a family whose pipeline draws the image
        latents from the VAE posterior with it (CogVideoX); preprocessing passes none (the posterior mode)."""
        raise ValueError(f"{self.model_path} is not an image-to-video model")

    @staticmethod
    def frame_image(frame: torch.Tensor):
        """A frame ``[3, H, W]`` in [-1, 1] as the 8-bit PIL image it was decoded from."""
        from PIL import Image

        pixels = ((frame.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))

    # --- video -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_video(self, vae: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] to normalised latents ``[B, C, T, h, w]``."""

    @abc.abstractmethod
    def decode_latents(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, T, h, w]`` to pixels ``[B, 3, F, H, W]`` in [-1, 1]."""

    # --- the DiT -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def set_attention(self, transformer: torch.nn.Module, sp_group=None, backend: str = "sdpa") -> None:
        """Install the family's attention on a plain diffusers DiT: the SP plan (split/gather hooks, Ulysses
        attention) when ``sp_group`` has more than one rank, and the kernel (``backend``: sdpa or flash)."""

    @abc.abstractmethod
    def predict_velocity(
        self, transformer: torch.nn.Module, noisy_latents: torch.Tensor, sigmas: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        """Flow velocity ``v = noise - latents`` at ``x_sigma = (1 - sigma) latents + sigma noise``.

        Hides the family's timestep and output conventions (Mochi: reversed time, negated output).
        """

    @abc.abstractmethod
    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        """The family's default sampling noise levels: ``[num_steps + 1]`` float32, descending to 0."""

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Sampling's starting noise [B, C, T, H, W] (float32), drawn as the family's pipeline draws it for
        ``generator`` (so a seed gives the pipeline's video)."""
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def initial_latents(self, noise: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Sampling's first latents from ``initial_noise`` and the record: the noise itself, unless the family's
        pipeline mixes its condition in (HunyuanVideo image-to-video)."""
        return noise

    native_schedulers: tuple[str, ...] = ()
    """Sampler kinds (``--scheduler_type``) that step the family pipeline's own scheduler in its own space
    (``native_scheduler``, ``predict_v``), beside fastvideo's Euler and PCM: CogVideoX's ``dpm``."""

    def native_scheduler(self, kind: str, num_steps: int):
        """The pipeline scheduler for ``kind`` (one of ``native_schedulers``) with ``num_steps`` timesteps."""
        raise ValueError(f"{self.family} has no scheduler {kind!r}")

    def pipeline_layout(self, x: torch.Tensor) -> torch.Tensor:
        """Latents in the family pipeline's layout and back (its own inverse): unchanged by default."""
        return x

    def comfyui_target(self, name: str) -> tuple[str, int, int]:
        """Where diffusers' DiT module ``name`` lives in the original checkpoint (what ComfyUI loads LoRA
        into): ``(module, part, parts)``, ``name`` being row block ``part`` of ``parts`` equal blocks of
        that module's weight (a fused projection: Mochi's ``qkv_x`` holds to_q, to_k, to_v), or ``(module,
        0, 1)``. ValueError where the family has no mapping."""
        raise ValueError(f"writing ComfyUI LoRA keys is not supported for {self.family} yet")

    def pcm_schedule(self) -> dict:
        """The base noise schedule a PCM solver grid is built on for this family (``--schedule auto``):
        ``{"schedule": "linear_quadratic" | "shift", "shift": float}``."""
        return {"schedule": "shift", "shift": 1.0}

    def init_buffers(self, transformer: torch.nn.Module) -> None:
        """Recompute non-persistent buffers after a meta-device build (``to_empty`` leaves them garbage).

        Nothing to do by default: Mochi's DiT keeps no such buffers."""
        return None
