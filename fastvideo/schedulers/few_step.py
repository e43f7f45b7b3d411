"""The few-step sampling scheduler of a DMD2-distilled folder (``python -m fastvideo.distill --method dmd2``).

Importable without training code: the folder's ``model_index.json`` names
``["fastvideo.schedulers.few_step", "FewStepFlowScheduler"]``, so the family's diffusers pipeline imports it.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

# diffusers finds a component's loading method by looking its base classes up in the module that
# model_index.json names, so SchedulerMixin must be importable from here.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from fastvideo.schedulers.flow_euler import FlowEulerScheduler


class FewStepFlowScheduler(FlowEulerScheduler, ConfigMixin):
    """Euler steps over a few fixed noise levels (``noise_levels``, descending, the first usually 1.0): the
    levels a DMD2 generator was trained at (``python -m fastvideo.distill --method dmd2``), usable in
    diffusers pipelines. ``set_timesteps(k)`` takes the first ``k`` levels, then 0; like
    :class:`PCMFlowScheduler` it ignores the pipeline's own ``sigmas`` but for their count::

        pipe = WanPipeline.from_pretrained("outputs/distill-dmd-wan")    # scheduler: FewStepFlowScheduler
        video = pipe(prompt, num_inference_steps=3, guidance_scale=1.0).frames[0]

    Each step goes from level i to level i + 1 along the model's velocity: the sample at the next level
    is the predicted clean latents re-noised with the noise the model implies (a deterministic, DDIM-like
    step), not with fresh noise as FastVideo's DMD sampler does.
    """

    @register_to_config
    def __init__(
        self,
        noise_levels: tuple[float, ...] = (1.0, 0.757, 0.522),
        num_train_timesteps: int = 1000,
        invert_sigmas: bool = False,
    ):
        self._init_state()
        levels = [float(v) for v in noise_levels]
        if (
            not levels
            or not all(0 < v <= 1 for v in levels)
            or any(b >= a for a, b in zip(levels, levels[1:], strict=False))
        ):
            raise ValueError(f"noise_levels must be descending in (0, 1], got {list(noise_levels)}")
        self.levels = torch.tensor(levels, dtype=torch.float32)

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        if not 1 <= num_steps <= len(self.levels):
            raise ValueError(
                f"this model was distilled at {len(self.levels)} noise levels; sample with 1 to "
                f"{len(self.levels)} steps, got {num_steps}"
            )
        return torch.cat([self.levels[:num_steps], torch.zeros(1)])
