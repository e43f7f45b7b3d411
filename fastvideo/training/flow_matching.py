"""Rectified-flow training utilities: noise levels, noisy latents, targets.

Convention (every family, conventions hidden in the adapter's ``predict_velocity``):
``x_sigma = (1 - sigma) * latents + sigma * noise`` with sigma in (0, 1], and the model is trained to
predict the velocity ``v = noise - latents`` with an MSE loss. Sigmas are drawn with diffusers'
``compute_density_for_timestep_sampling`` (uniform, logit_normal, mode) and then shifted:
``sigma' = s * sigma / (1 + (s - 1) * sigma)`` (s > 1 spends more steps at high noise).
"""

from __future__ import annotations

import torch

WEIGHTING_SCHEMES = ("uniform", "logit_normal", "mode")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    batch_size: int,
    *,
    scheme: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise levels [B] in (0, 1]."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting scheme {scheme!r} not in {WEIGHTING_SCHEMES}")
    u = compute_density_for_timestep_sampling(
        weighting_scheme="none" if scheme == "uniform" else scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        generator=generator,
    )
    # Keep away from sigma = 0, where the target carries no signal about the noise.
    return shift_sigmas(u.clamp(1e-3, 1.0), shift)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    s = sigmas.view(-1, *([1] * (latents.dim() - 1))).to(latents.dtype)
    return (1 - s) * latents + s * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - latents
