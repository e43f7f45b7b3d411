"""The PCM sampling scheduler and the solver grid it walks, in flow-matching form.

Importable without any training code: a distilled model's ``model_index.json`` names
``["fastvideo.schedulers", "PCMFlowScheduler"]``, so ``MochiPipeline.from_pretrained`` (or
``WanPipeline``) imports this module to build its scheduler.

Convention: a noise level ``sigma`` lies in [0, 1], ``x_sigma = (1 - sigma) * x0 + sigma * noise``,
the velocity is ``v = noise - x0`` and one Euler step is ``x_s' = x_s + (s' - s) * v``::

    base = base_sigmas("linear_quadratic")                  # [1000] descending noise levels, base[0] = 1
    grid = SolverGrid.build(base, num_euler_timesteps=50)   # 50 solver points + sigma 0
    grid.sampling_sigmas(8)                                 # the 8-step sampling schedule
    scheduler = PCMFlowScheduler(num_euler_timesteps=50)    # the same grid behind diffusers' API
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

# diffusers finds a component's loading method by looking its base classes up in the module that
# model_index.json names, so SchedulerMixin must be importable from here.
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401

from fastvideo.schedulers.flow_euler import FlowEulerScheduler

SCHEDULE_KINDS = ("linear_quadratic", "shift")


def _shift_sigmas(num_train_timesteps: int, shift: float) -> torch.Tensor:
    """SD3-style shifted schedule: sigma = shift * u / (1 + (shift - 1) * u), u from 1 down to 1/T."""
    u = torch.linspace(1.0, 1.0 / num_train_timesteps, num_train_timesteps, dtype=torch.float64)
    return shift * u / (1 + (shift - 1) * u)


def _linear_quadratic_sigmas(num_train_timesteps: int, threshold: float, linear_range: float) -> torch.Tensor:
    """Mochi's schedule via diffusers' ``linear_quadratic_schedule``.

    That function already returns ``num_train_timesteps`` noise levels (it applies ``1 - x`` itself)
    starting at exactly 1.0 and stopping one step short of 0, so it meets our contract as is; we only
    check the linear part's length (the quadratic part divides by the remaining step count).
    """
    linear_steps = int(linear_range * num_train_timesteps)
    if not 0 < linear_steps < num_train_timesteps:
        raise ValueError(
            f"linear_range={linear_range} gives {linear_steps} linear steps of {num_train_timesteps}; "
            "it must leave at least one linear and one quadratic step"
        )
    values = linear_quadratic_schedule(num_train_timesteps, threshold, linear_steps=linear_steps)
    return torch.tensor(values, dtype=torch.float64)


def base_sigmas(
    kind: str = "linear_quadratic",
    *,
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    linear_threshold: float = 0.1,
    linear_range: float = 0.75,
) -> torch.Tensor:
    """The teacher's training noise levels: ``[num_train_timesteps]`` float32, descending, first 1.0, all > 0.

    ``kind`` is ``"shift"`` (uses ``shift``) or ``"linear_quadratic"`` (Mochi; uses ``linear_threshold``
    and ``linear_range``, the fraction of steps in the linear part).
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if kind == "shift":
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        sigmas = _shift_sigmas(num_train_timesteps, shift)
    elif kind == "linear_quadratic":
        sigmas = _linear_quadratic_sigmas(num_train_timesteps, linear_threshold, linear_range)
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULE_KINDS}")
    # Bad thresholds can bend the quadratic part up or below zero; the grid relies on both properties.
    if not (sigmas > 0).all() or not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"schedule {kind!r} with these parameters is not strictly descending and positive")
    return sigmas.float()


def _floor_linspace(stop: int, num: int) -> list[int]:
    """floor(linspace(0, stop, num, endpoint=False)), computed in float64 like numpy does."""
    return np.floor(np.linspace(0, stop, num, endpoint=False)).astype(np.int64).tolist()


@dataclass(frozen=True)
class SolverGrid:
    """The ``N`` teacher-solver points plus sigma 0: ``sigmas`` is ``[N + 1]``, strictly descending.

    Index ``i`` in ``[0, N)`` is a point a training sample can start from; the teacher takes one Euler
    step ``i -> i + 1``, and the consistency target is projected to ``phase_end(i, phases)``.
    """

    sigmas: torch.Tensor

    @classmethod
    def build(cls, base: torch.Tensor, num_euler_timesteps: int = 50) -> SolverGrid:
        """Pick ``num_euler_timesteps`` points of ``base`` at floor(linspace(0, T, N, endpoint=False)), append 0."""
        total = len(base)
        if not 1 <= num_euler_timesteps <= total:
            raise ValueError(f"num_euler_timesteps must be in [1, {total}], got {num_euler_timesteps}")
        picked = base[_floor_linspace(total, num_euler_timesteps)]
        sigmas = torch.cat([picked, picked.new_zeros(1)])
        if not (sigmas[1:] < sigmas[:-1]).all():
            raise ValueError("base schedule must be strictly descending and positive")
        return cls(sigmas)

    @property
    def num_points(self) -> int:
        """N, the number of solver points (the final sigma 0 is not one)."""
        return len(self.sigmas) - 1

    def _check_phases(self, num_phases: int) -> None:
        if not 1 <= num_phases <= self.num_points:
            raise ValueError(f"num_phases must be in [1, {self.num_points}], got {num_phases}")

    def phase_starts(self, num_phases: int) -> list[int]:
        """Grid indices where the phases begin: floor(linspace(0, N, num_phases, endpoint=False))."""
        self._check_phases(num_phases)
        return _floor_linspace(self.num_points, num_phases)

    def phase_end(self, index: int, num_phases: int) -> int:
        """The first phase start strictly after ``index``, or ``N`` (sigma 0) in the last phase.

        With one phase every index maps to ``N``, i.e. the student predicts x0 (a consistency model).
        """
        if not 0 <= index < self.num_points:
            raise ValueError(f"index must be in [0, {self.num_points}), got {index}")
        return next((s for s in self.phase_starts(num_phases) if s > index), self.num_points)

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        """``[num_steps + 1]`` sigmas to sample with: grid points at floor(linspace(0, N, num_steps)) then 0."""
        if not 1 <= num_steps <= self.num_points:
            raise ValueError(f"num_steps must be in [1, {self.num_points}], got {num_steps}")
        return self.sigmas[_floor_linspace(self.num_points, num_steps) + [self.num_points]].clone()


class PCMFlowScheduler(FlowEulerScheduler, ConfigMixin):
    """Deterministic Euler sampler over a PCM solver grid, usable in diffusers pipelines.

    ``set_timesteps(n)`` picks ``n`` grid points (``SolverGrid.sampling_sigmas``) and ``step`` moves
    the sample from one to the next with one Euler step, in either timestep convention
    (:class:`FlowEulerScheduler`). A distilled model's folder names this class in
    ``model_index.json`` (as ``fastvideo.schedulers``; folders saved before name
    ``fastvideo.distill.pcm``, which still imports it), so diffusers finds it::

        pipe = MochiPipeline.from_pretrained("outputs/distill-mochi")   # scheduler: PCMFlowScheduler
        video = pipe(prompt, num_inference_steps=8).frames[0]

    MochiPipeline always passes its own linear-quadratic ``sigmas`` to ``set_timesteps``; only their
    count is used, because a distilled student is only right on the grid it was trained on.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_quadratic",
        shift: float = 1.0,
        linear_threshold: float = 0.1,
        linear_range: float = 0.75,
        num_euler_timesteps: int = 50,
        invert_sigmas: bool = True,
    ):
        self._init_state()
        # Built eagerly so that bad configs fail at construction, not mid-sampling.
        self.grid = self._build_grid()

    def _build_grid(self) -> SolverGrid:
        cfg = self.config
        base = base_sigmas(
            cfg.schedule, num_train_timesteps=cfg.num_train_timesteps, shift=cfg.shift,
            linear_threshold=cfg.linear_threshold, linear_range=cfg.linear_range,
        )  # fmt: skip
        return SolverGrid.build(base, cfg.num_euler_timesteps)

    def sampling_sigmas(self, num_steps: int) -> torch.Tensor:
        return self.grid.sampling_sigmas(num_steps)
