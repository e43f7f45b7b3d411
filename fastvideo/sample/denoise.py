"""The Euler denoising loop over a list of noise levels, for any model family through its adapter.

    sigmas = torch.tensor([1.0, 0.5, 0.0])               # descending; the last is usually 0
    latents = euler_denoise(adapter, transformer, noise, sigmas, cond, guidance=4.5, negative=uncond)
    # noise [B, C, T, H, W] -> latents of the same shape; cond/uncond: conditioning records

Each step is ``x <- x + (sigma_next - sigma) * v`` with the adapter's velocity ``v = noise - x0``
(the family's own timestep convention stays inside the adapter). With ``guidance > 1`` the
velocity is ``v_u + guidance * (v_c - v_u)``, the unconditional one from ``negative`` (an encoded
negative prompt, or the family's ``null_condition``, what the trainers drop captions to).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch


@torch.no_grad()
def euler_denoise(
    adapter,
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    cond: dict[str, torch.Tensor],
    guidance: float = 1.0,
    negative: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (at ``sigmas[0]``) down to ``sigmas[-1]``; ``on_step(i)`` after each step.

    The update runs in float32; with ``model_dtype`` (e.g. bf16 weights) the DiT's inputs are cast to it.
    """
    sigmas = sigmas.to(latents.device, torch.float32)
    if guidance > 1.0 and negative is None:
        negative = adapter.null_condition(cond, None)
    batch = latents.shape[0]
    latents = latents.float()

    def velocity(x: torch.Tensor, s: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        if model_dtype is not None:
            x = x.to(model_dtype)
            c = {k: v.to(model_dtype) if v.is_floating_point() else v for k, v in c.items()}
        return adapter.predict_velocity(transformer, x, s, c).float()

    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        s = sigma.expand(batch)
        v = velocity(latents, s, cond)
        if guidance > 1.0:
            v_uncond = velocity(latents, s, negative)
            v = v_uncond + guidance * (v - v_uncond)
        latents = latents + (sigma_next - sigma) * v
        if on_step is not None:
            on_step(i)
    return latents


@torch.no_grad()
def scheduler_denoise(
    adapter,
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    scheduler,
    cond: dict[str, torch.Tensor],
    guidance: float = 1.0,
    negative: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` (noise) with a diffusers DDPM-family scheduler stepping in its own space, as the
    family's pipeline does (CogVideoX's ``CogVideoXDPMScheduler``): the DiT's own output
    (``adapter.predict_v``) at the scheduler's integer timesteps, guidance as above, and each step taken
    in the pipeline's tensor layout (``adapter.pipeline_layout``), so a stochastic step draws its noise
    from ``generator`` exactly as the pipeline does. ``scheduler`` has its timesteps set."""
    if guidance > 1.0 and negative is None:
        negative = adapter.null_condition(cond, None)
    two_step = "old_pred_original_sample" in inspect.signature(scheduler.step).parameters
    timesteps = scheduler.timesteps
    latents = latents.float() * scheduler.init_noise_sigma
    previous_x0 = None

    def output(x: torch.Tensor, t: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        if model_dtype is not None:
            x = x.to(model_dtype)
            c = {k: v.to(model_dtype) if v.is_floating_point() else v for k, v in c.items()}
        return adapter.predict_v(transformer, x, t, c).float()

    for i, t in enumerate(timesteps):
        t_batch = t.expand(latents.shape[0]).float().to(latents.device)
        out = output(latents, t_batch, cond)
        if guidance > 1.0:
            out_uncond = output(latents, t_batch, negative)
            out = out_uncond + guidance * (out - out_uncond)
        out, sample = adapter.pipeline_layout(out), adapter.pipeline_layout(latents)
        if two_step:  # DPM-Solver++ (2M): it also takes the previous step's x0 estimate and timestep
            back = timesteps[i - 1] if i > 0 else None
            sample, previous_x0 = scheduler.step(
                out, previous_x0, t, back, sample, eta=0.0, generator=generator, return_dict=False
            )
        else:
            sample = scheduler.step(out, t, sample, eta=0.0, generator=generator, return_dict=False)[0]
        latents = adapter.pipeline_layout(sample)
        if on_step is not None:
            on_step(i)
    return latents
