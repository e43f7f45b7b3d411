"""The contract every model-family adapter fulfils.

An adapter has one job: it knows a family's diffusers directory layout, how that family encodes
text and video, and its frame/size rules. It holds no training loop and no distributed setup.
Components are loaded one at a time (``load_vae``, ``load_text_encoder``) so a preprocessing pass
holds only what it needs: the VAE pass never has the text encoder in memory and vice versa.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class VideoRules:
    """Shape rules a family imposes on the pixel-space input."""

    temporal_factor: int  # VAE temporal compression: frames must be temporal_factor*k + 1
    spatial_factor: int  # VAE spatial compression
    patch_size: int  # DiT spatial patch size (height/width of the latent must divide by it)

    @property
    def size_multiple(self) -> int:
        return self.spatial_factor * self.patch_size

    def frame_error(self, num_frames: int) -> str | None:
        """A message naming valid frame counts, or None when ``num_frames`` is valid."""
        k = self.temporal_factor
        if num_frames >= 1 and (num_frames - 1) % k == 0:
            return None
        below = max(1, ((num_frames - 1) // k) * k + 1)
        above = below + k if below <= num_frames else below
        return (
            f"NUM_FRAMES={num_frames} is not valid: frames must be {k}k+1 (1, {k + 1}, {2 * k + 1}, ...); "
            f"nearest valid values: {below} or {above}"
        )

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


class ModelAdapter(abc.ABC):
    """Loads one family's diffusers-layout directory and encodes/decodes for it."""

    family: str
    rules: VideoRules
    latent_channels: int
    max_text_tokens: int

    def __init__(self, model_path: str | Path, *, device: torch.device | str = "cpu", dtype=torch.float32):
        self.model_path = Path(model_path)
        self.device = torch.device(device)
        self.dtype = dtype

    @abc.abstractmethod
    def load_vae(self) -> torch.nn.Module: ...

    @abc.abstractmethod
    def load_text_encoder(self) -> None:
        """Load the tokenizer and text encoder (kept on the adapter until ``unload_text_encoder``)."""

    @abc.abstractmethod
    def unload_text_encoder(self) -> None: ...

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(prompt_embeds [B, L, D], prompt_attention_mask [B, L] bool)``."""

    @abc.abstractmethod
    def encode_video(self, vae: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] to normalised latents ``[B, C, T, h, w]``."""

    @abc.abstractmethod
    def transformer_config(self) -> dict:
        """The DiT's config (from ``transformer/config.json``), without loading weights."""

    @abc.abstractmethod
    def transformer_class(self) -> type[torch.nn.Module]: ...

    @abc.abstractmethod
    def transformer_blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        """The repeated blocks: the unit of FSDP sharding and activation checkpointing."""

    @abc.abstractmethod
    def num_attention_heads(self, transformer: torch.nn.Module) -> int: ...

    @abc.abstractmethod
    def set_attention(self, transformer: torch.nn.Module, sp_group=None, backend: str = "sdpa") -> None:
        """Install the family's attention on a plain diffusers DiT: the SP plan (split/gather hooks, Ulysses
        attention) when ``sp_group`` has more than one rank, and the kernel (``backend``: sdpa or flash)."""

    @abc.abstractmethod
    def predict_velocity(
        self,
        transformer: torch.nn.Module,
        noisy_latents: torch.Tensor,
        sigmas: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Flow velocity ``v = noise - latents`` at ``x_sigma = (1 - sigma) latents + sigma noise``.

        Hides the family's timestep and output conventions (Mochi: reversed time, negated output).
        """

    @abc.abstractmethod
    def default_sigmas(self, num_steps: int) -> torch.Tensor:
        """The family's default sampling noise levels: ``[num_steps + 1]`` float32, descending to 0."""

    @abc.abstractmethod
    def decode_latents(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, T, h, w]`` to pixels ``[B, 3, F, H, W]`` in [-1, 1]."""
