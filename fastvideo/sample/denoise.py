"""The Euler denoising loop over a list of noise levels, for any model family through its adapter.

    sigmas = torch.tensor([1.0, 0.5, 0.0])               # descending; the last is usually 0
    latents = euler_denoise(adapter, transformer, noise, sigmas, prompt_embeds, prompt_attention_mask,
                            guidance=4.5)                 # [B, C, T, H, W] -> the same shape

Each step is ``x <- x + (sigma_next - sigma) * v`` with the adapter's velocity ``v = noise - x0``
(the family's own timestep convention stays inside the adapter). With ``guidance > 1`` the
velocity is ``v_u + guidance * (v_c - v_u)``, the unconditional one from ``negative`` (embeds,
mask), by default the zero embedding the trainers drop captions to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def euler_denoise(
    adapter,
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    guidance: float = 1.0,
    negative: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (at ``sigmas[0]``) down to ``sigmas[-1]``; ``on_step(i)`` after each step."""
    sigmas = sigmas.to(latents.device, torch.float32)
    if guidance > 1.0 and negative is None:
        negative = (torch.zeros_like(prompt_embeds), torch.zeros_like(prompt_attention_mask))
    batch = latents.shape[0]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        s = sigma.expand(batch)
        v = adapter.predict_velocity(transformer, latents, s, prompt_embeds, prompt_attention_mask).float()
        if guidance > 1.0:
            v_uncond = adapter.predict_velocity(transformer, latents, s, *negative).float()
            v = v_uncond + guidance * (v - v_uncond)
        latents = latents + (sigma_next - sigma) * v
        if on_step is not None:
            on_step(i)
    return latents
