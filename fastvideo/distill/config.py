"""The distillation configuration: ``TrainConfig`` plus the PCM flags, and the phase-schedule syntax.

Light on purpose (no diffusers import), so the launcher's preflight check stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fastvideo.models import get_adapter_class
from fastvideo.models.base import boundary_ratio, component_fingerprint
from fastvideo.training.config import TrainConfig, transformer_config


def _parse_phase_entry(entry: str) -> tuple[int, int]:
    parts = entry.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"bad phase schedule entry {entry!r}; expected 'UNTIL_STEP-PHASES', e.g. '4000-1'")
    until, phases = int(parts[0]), int(parts[1])
    if phases < 1:
        raise ValueError(f"phase count must be >= 1 in {entry!r}")
    return until, phases


def parse_phase_schedule(spec: str) -> list[tuple[int, int]]:
    """Parse ``"4000-1,8000-2"`` into ``[(4000, 1), (8000, 2)]``: (until-step, phases) pairs.

    Until-steps must increase strictly, so each entry covers a non-empty step range.
    """
    entries = [e.strip() for e in spec.split(",")]
    if not spec.strip() or any(not e for e in entries):
        raise ValueError(f"empty entry in phase schedule {spec!r}")
    schedule = [_parse_phase_entry(e) for e in entries]
    untils = [u for u, _ in schedule]
    if any(b <= a for a, b in zip(untils, untils[1:], strict=False)):
        raise ValueError(f"until-steps must increase strictly in phase schedule {spec!r}")
    return schedule


def phases_at(schedule: list[tuple[int, int]], step: int) -> int:
    """Phases of the first entry whose until-step is > ``step``; past the end, the last entry's."""
    if not schedule:
        raise ValueError("empty phase schedule")
    return next((phases for until, phases in schedule if until > step), schedule[-1][1])


_EXPERTS = (
    "distilling a two-expert folder (Wan 2.2 A14B) is not implemented yet (each expert's solver grid would stop "
    "at the boundary)"
)
METHODS = ("pcm", "dmd2")
_NOISE_LEVELS = "distillation draws noise levels from the solver grid (--num_euler_timesteps, --schedule)"


@dataclass
class DistillConfig(TrainConfig):
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = TrainConfig.RESUME_MAY_CHANGE | {
        "validation_step_counts",
        "validation_guidance_scales",
        "collapse_reference_steps",
    }
    # Fine-tuning flags the distiller has no use for: refused rather than silently ignored.
    REFUSED_FLAGS: ClassVar[dict[str, str]] = {
        "validation_sampling_steps": "distillation validates at --validation_step_counts on the solver grid",
        "validation_guidance_scale": "distillation validates at --validation_guidance_scales",
        "weighting_scheme": _NOISE_LEVELS,
        "logit_mean": _NOISE_LEVELS,
        "logit_std": _NOISE_LEVELS,
        "mode_scale": _NOISE_LEVELS,
        "expert": _EXPERTS,
    }

    teacher_model_path: str = ""
    """Diffusers directory of the teacher (default: --model_path, the student's starting point; with
    --use_lora the default teacher is the student's base with its adapters switched off)."""
    schedule: str = "auto"
    """Base sigma schedule of the solver grid: linear_quadratic, shift (uses --shift), or auto: the family's
    own (Mochi: linear_quadratic; Wan: shift by the model folder's flow shift)."""
    linear_quadratic_threshold: float = 0.1
    linear_range: float = 0.75
    num_euler_timesteps: int = 50
    """Solver grid points."""
    multi_phased_distill_schedule: str = "4000-1"
    """Phases per step range: '4000-1' = 1 phase until step 4000; '2000-4,4000-1' and so on."""
    distill_cfg: float = 3.0
    """Teacher guidance w in v_c + w (v_c - v_u)."""
    not_apply_cfg_solver: bool = False
    """Use the teacher's conditional velocity alone (no guidance in the solver)."""
    huber_c: float = 0.001
    validation_step_counts: str = ""
    """Sampling steps to validate with: on the solver grid (pcm; default 2,4,8), or the first k of
    --dmd_noise_levels (dmd2; default all of them)."""
    method: str = "pcm"
    """pcm (phased consistency distillation) or dmd2 (distribution matching: the teacher as the real score,
    a trainable critic as the fake score)."""
    dmd_noise_levels: str = "1.0,0.757,0.522"
    """dmd2: the generator's sampling noise levels (FastVideo's timesteps 1000, 757, 522 / 1000); it is trained
    to predict clean latents from each."""
    critic_learning_rate: float = 0.0
    """dmd2: the critic's learning rate (0: --learning_rate). Its AdamW takes the other optimizer flags."""
    generator_update_interval: int = 5
    """dmd2: the critic steps every step, the generator every this many (DMD2's 5)."""
    dmd_min_noise: float = 0.02
    """dmd2: the lowest noise level at which the real and fake scores compare the generator's output."""
    dmd_max_noise: float = 0.98
    """dmd2: the highest such noise level."""
    validation_guidance_scales: str = "1.0"
    collapse_reference_steps: int = 32
    """The collapse guard's reference (--collapse_fraction): the teacher sampled with this many Euler steps on
    the family's schedule, at guidance 1 + --distill_cfg."""

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "dmd2":
            self.noise_levels()
            if self.generator_update_interval < 1 or not 0 < self.dmd_min_noise < self.dmd_max_noise <= 1:
                raise ValueError(
                    "--generator_update_interval must be >= 1 and 0 < --dmd_min_noise < --dmd_max_noise <= 1"
                )
            self.check_step_counts()
        if self.schedule not in ("auto", "linear_quadratic", "shift"):
            raise ValueError("--schedule must be auto, linear_quadratic or shift")
        if self.num_euler_timesteps < 2 or self.huber_c <= 0:
            raise ValueError("--num_euler_timesteps must be >= 2 and --huber_c > 0")
        parse_phase_schedule(self.multi_phased_distill_schedule)

    def check_settings(self, world_size: int) -> None:
        objective = get_adapter_class(self.model_type).objective
        if objective != "flow_velocity":
            raise ValueError(
                f"distilling {self.model_type} is not implemented yet: it trains with {objective}, and PCM here "
                "distils flow-matching models (the DDPM form with a DDIM solver, whose phases CogVideoXPipeline "
                "could sample with its own DDIM scheduler, is planned)"
            )
        if boundary_ratio(self.model_path) is not None:
            raise ValueError(
                f"{self.model_path} holds two noise-level experts: {_EXPERTS}; fine-tune them with --expert"
            )
        super().check_settings(world_size)
        if self.teacher_model_path:
            teacher, student = (transformer_config(p) for p in (self.teacher_model_path, self.model_path))
            differ = sorted(k for k in set(teacher) | set(student) if teacher.get(k) != student.get(k))
            if differ:
                raise ValueError(
                    f"the teacher {self.teacher_model_path} and the student {self.model_path} are different "
                    f"architectures (transformer configs differ in {', '.join(differ)})"
                )

    def fingerprint(self) -> dict:
        run = super().fingerprint()
        if self.teacher_model_path:
            run["teacher_model_path"] = component_fingerprint(self.teacher_model_path, ("transformer",))
        return run

    def scheduler(self, adapter):
        """The sampling scheduler (``PCMFlowScheduler``) on this run's solver grid, in the family's timestep
        convention (``adapter.timesteps_reversed``: Mochi's runs backwards) and, with ``--schedule auto``,
        on the family's schedule (``adapter.pcm_schedule()``)."""
        from fastvideo.schedulers import PCMFlowScheduler

        family = adapter.pcm_schedule() if self.schedule == "auto" else {}
        schedule, shift = family.get("schedule", self.schedule), family.get("shift", self.shift)
        invert_sigmas = adapter.timesteps_reversed
        return PCMFlowScheduler(
            schedule=schedule, shift=shift, linear_threshold=self.linear_quadratic_threshold,
            linear_range=self.linear_range, num_euler_timesteps=self.num_euler_timesteps,
            invert_sigmas=invert_sigmas,
        )  # fmt: skip

    def noise_levels(self) -> list[float]:
        """dmd2's generator noise levels, validated: descending in (0, 1]."""
        try:
            levels = [float(v) for v in self.dmd_noise_levels.split(",") if v.strip()]
        except ValueError:
            levels = []
        if (
            not levels
            or not all(0 < v <= 1 for v in levels)
            or any(b >= a for a, b in zip(levels, levels[1:], strict=False))
        ):
            raise ValueError(
                f"--dmd_noise_levels must be descending numbers in (0, 1], e.g. 1.0,0.757,0.522; got "
                f"{self.dmd_noise_levels!r}"
            )
        return levels

    def few_step_scheduler(self, adapter):
        """dmd2's sampling scheduler: Euler over the generator's noise levels, in the family's convention."""
        from fastvideo.schedulers import FewStepFlowScheduler

        return FewStepFlowScheduler(
            noise_levels=self.noise_levels(), invert_sigmas=adapter.timesteps_reversed
        )

    @property
    def step_counts(self) -> list[int]:
        counts = self.check_step_counts()
        if self.method == "dmd2":
            return counts or [len(self.noise_levels())]
        return counts or [2, 4, 8]

    def check_step_counts(self) -> list[int]:
        """The --validation_step_counts given (ValueError for a dmd2 count beyond its noise levels)."""
        counts = [int(x) for x in self.validation_step_counts.split(",") if x.strip()]
        levels = len(self.noise_levels()) if self.method == "dmd2" else None
        if levels is not None and any(not 1 <= k <= levels for k in counts):
            raise ValueError(
                f"--validation_step_counts: dmd2 samples with 1 to {levels} steps (its noise levels)"
            )
        return counts

    @property
    def guidance_scales(self) -> list[float]:
        return [float(x) for x in self.validation_guidance_scales.split(",") if x.strip()]
