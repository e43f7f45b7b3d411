"""Training objectives: which noise levels a fine-tuning run draws and how it weights the error.

    objective = make_objective(adapter, cfg)          # from adapter.objective
    sigmas = torch.cat([objective.draw_sigma(g) for g in generators])
    loss = objective.loss(pred, latents, noise, sigmas)

Every family is trained in fastvideo's flow-matching terms (``x_sigma = (1 - sigma) x0 + sigma noise``,
the adapter's ``predict_velocity`` against ``noise - x0``, see :mod:`fastvideo.training.flow_matching`);
an objective only chooses the noise levels and the per-sample weight:

* ``flow_velocity`` (Mochi, Wan, HunyuanVideo): sigmas from ``--weighting_scheme`` (uniform,
  logit-normal, mode) and ``--shift``, unweighted MSE;
* ``v_prediction`` (CogVideoX): integer DDPM timesteps drawn uniformly and the adapter's weights, so
  the loss is the DDPM v-prediction MSE of diffusers' CogVideoX trainers (see
  :mod:`fastvideo.models.cogvideox`). The weighting flags do not apply and are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastvideo.training.flow_matching import sample_sigmas, velocity_target

# The flags that shape flow_velocity's noise levels, with their defaults.
SIGMA_FLAGS = {
    "weighting_scheme": "uniform",
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "mode_scale": 1.29,
    "shift": 1.0,
}


class FlowVelocity:
    """Noise levels from the config's weighting scheme; the plain velocity MSE."""

    name = "flow_velocity"

    def __init__(self, cfg) -> None:
        self.kwargs = dict(
            scheme=cfg.weighting_scheme, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
            mode_scale=cfg.mode_scale, shift=cfg.shift,
        )  # fmt: skip

    def draw_sigma(self, generator: torch.Generator) -> torch.Tensor:
        return sample_sigmas(1, generator=generator, **self.kwargs)

    def loss(self, pred, latents, noise, sigmas) -> torch.Tensor:
        return F.mse_loss(pred.float(), velocity_target(latents, noise))


class VPrediction:
    """Uniform integer DDPM timesteps; the velocity error weighted per sample into the v-prediction MSE."""

    name = "v_prediction"

    def __init__(self, adapter, cfg) -> None:
        changed = [f"--{k}" for k, default in SIGMA_FLAGS.items() if getattr(cfg, k) != default]
        if changed:
            raise ValueError(
                f"{adapter.family} trains with DDPM v-prediction on uniformly drawn timesteps (as diffusers' "
                f"CogVideoX trainers); drop {', '.join(changed)}: it shapes flow-matching noise levels only"
            )
        self.adapter = adapter

    def draw_sigma(self, generator: torch.Generator) -> torch.Tensor:
        return self.adapter.training_sigmas(generator)

    def loss(self, pred, latents, noise, sigmas) -> torch.Tensor:
        error = (pred.float() - velocity_target(latents, noise)).square().flatten(1).mean(1)
        return (self.adapter.loss_weights(sigmas).to(error.device) * error).mean()


def make_objective(adapter, cfg):
    """The objective the adapter's family trains with (ValueError for one fastvideo lacks)."""
    if adapter.objective == FlowVelocity.name:
        return FlowVelocity(cfg)
    if adapter.objective == VPrediction.name:
        return VPrediction(adapter, cfg)
    raise ValueError(
        f"{adapter.family} trains with {adapter.objective}, which fastvideo does not implement; "
        f"implemented: {FlowVelocity.name}, {VPrediction.name}"
    )
