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
_NOISE_LEVELS = "distillation draws noise levels from the solver grid (--num_euler_timesteps, --schedule)"


@dataclass
class DistillConfig(TrainConfig):
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = TrainConfig.RESUME_MAY_CHANGE | {
        "validation_step_counts",
        "validation_guidance_scales",
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
    validation_step_counts: str = "2,4,8"
    """Sampling steps (on the solver grid) to validate with."""
    validation_guidance_scales: str = "1.0"

    def __post_init__(self):
        super().__post_init__()
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

    @property
    def step_counts(self) -> list[int]:
        return [int(x) for x in self.validation_step_counts.split(",") if x.strip()]

    @property
    def guidance_scales(self) -> list[float]:
        return [float(x) for x in self.validation_guidance_scales.split(",") if x.strip()]
