"""Phased consistency distillation (PCM) training math in flow-matching form.

The solver grid and the sampling scheduler live in :mod:`fastvideo.schedulers.pcm` (a saved
pipeline names ``PCMFlowScheduler`` and must load without training code); they are re-exported
here, so folders saved with ``["fastvideo.distill.pcm", "PCMFlowScheduler"]`` still load. Pieces,
in the order the distiller uses them::

    base = base_sigmas("linear_quadratic")            # [1000] descending noise levels, base[0] = 1
    grid = SolverGrid.build(base, num_euler_timesteps=50)   # 50 solver points + sigma 0
    schedule = parse_phase_schedule("4000-1,8000-2")  # 1 phase until step 4000, then 2
    phases = phases_at(schedule, step)
    end = grid.phase_end(i, phases)                   # where point i's consistency target lives
    loss = pseudo_huber(f_student, f_target, c=0.001)
"""

from __future__ import annotations

import torch

from fastvideo.distill.config import parse_phase_schedule, phases_at
from fastvideo.schedulers.pcm import SCHEDULE_KINDS, PCMFlowScheduler, SolverGrid, base_sigmas

__all__ = [
    "SCHEDULE_KINDS",
    "PCMFlowScheduler",
    "SolverGrid",
    "base_sigmas",
    "parse_phase_schedule",
    "phases_at",
    "pseudo_huber",
]


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + c^2) - c): ~0.5 x^2 / c for |x| << c, ~|x| for |x| >> c."""
    sq = (pred - target).square()
    # Same value as sqrt(sq + c^2) - c, but without its cancellation: in float32 that form loses
    # all precision once |pred - target| is far below c, which is where training converges.
    return (sq / (torch.sqrt(sq + c * c) + c)).mean()
