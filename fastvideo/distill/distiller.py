"""Phased consistency distillation (PCM, flow-matching form) on the fine-tuning machinery.

``Distiller`` subclasses the fine-tuning ``Trainer`` and overrides only its configuration, the
teacher's setup and the loss step. One step, per sample (the grid index, noise and caption dropout
come from the same seeded per-sample generator as fine-tuning, so SP ranks agree):

1. draw a solver-grid index i; x_i = (1 - s_i) x0 + s_i noise;
2. the frozen teacher takes one Euler step to s_{i+1}, with classifier-free guidance
   v_T = v_c + w (v_c - v_u) against the zero embedding (``--distill_cfg`` w;
   ``--not_apply_cfg_solver`` uses v_c alone);
3. the target projects x_{i+1} to the end s_e of i's phase with the EMA student (``--use_ema``) or
   the student without gradients: f- = x_{i+1} + (s_e - s_{i+1}) v-;
4. the student projects x_i to the same end: f = x_i + (s_e - s_i) v; loss = pseudo-Huber(f, f-).

The teacher is a second, frozen copy of the DiT (in the compute dtype: bf16 on GPU) under the same
FSDP2 + SP layout; with ``--use_lora`` the student is base + LoRA and the teacher is the same model
with its adapters off. Targets are computed before the student's forward, so swapping EMA weights
in never touches tensors that backward needs.

The output folder is a whole diffusers pipeline, as after fine-tuning (``write_pipeline_folder``),
whose ``scheduler/`` is a ``PCMFlowScheduler`` on the training grid.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fastvideo.distill.pcm import (
    PCMFlowScheduler,
    parse_phase_schedule,
    phases_at,
    pseudo_huber,
)
from fastvideo.parallel.fsdp import apply_fsdp
from fastvideo.training.config import TrainConfig
from fastvideo.training.export import load_transformer_weights
from fastvideo.training.flow_matching import add_noise
from fastvideo.training.trainer import Trainer, sample_generator


@dataclass
class DistillConfig(TrainConfig):
    teacher_model_path: str = ""
    """Diffusers directory of the teacher (default: --model_path, the student's starting point)."""
    schedule: str = "linear_quadratic"
    """Base sigma schedule of the solver grid: linear_quadratic (Mochi) or shift (uses --shift)."""
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
        if self.schedule not in ("linear_quadratic", "shift"):
            raise ValueError("--schedule must be linear_quadratic or shift")
        if self.num_euler_timesteps < 2 or self.huber_c <= 0:
            raise ValueError("--num_euler_timesteps must be >= 2 and --huber_c > 0")
        parse_phase_schedule(self.multi_phased_distill_schedule)

    def scheduler(self) -> PCMFlowScheduler:
        """The sampling scheduler on this run's solver grid."""
        return PCMFlowScheduler(
            schedule=self.schedule, shift=self.shift, linear_threshold=self.linear_quadratic_threshold,
            linear_range=self.linear_range, num_euler_timesteps=self.num_euler_timesteps,
        )  # fmt: skip

    @property
    def step_counts(self) -> list[int]:
        return [int(x) for x in self.validation_step_counts.split(",") if x.strip()]

    @property
    def guidance_scales(self) -> list[float]:
        return [float(x) for x in self.validation_guidance_scales.split(",") if x.strip()]


class Distiller(Trainer):
    cfg: DistillConfig

    def setup(self) -> None:
        super().setup()
        cfg = self.cfg
        self.grid = cfg.scheduler().grid
        self.phase_schedule = parse_phase_schedule(cfg.multi_phased_distill_schedule)
        self.teacher = None if cfg.use_lora else self.build_teacher()

    def build_teacher(self) -> torch.nn.Module:
        """A frozen copy of the DiT in the compute dtype, sharded and sequence-parallel like the student."""
        cfg = self.cfg
        path = Path(cfg.teacher_model_path or cfg.model_path)
        with torch.device("meta"):
            teacher = self.adapter.transformer_class().from_config(self.adapter.transformer_config())
            teacher = teacher.to(self.compute_dtype()).requires_grad_(False)
        if self.dims.sp_enabled:
            self.adapter.enable_sequence_parallel(teacher, self.dims.sp_mesh.get_group())
        if self.dist.world_size > 1:
            blocks = self.adapter.transformer_blocks(teacher)
            apply_fsdp(teacher, blocks, mesh=self.dims.fsdp_mesh, reduce_dtype=torch.float32)
        teacher.to_empty(device=self.dist.device)
        load_transformer_weights(teacher, path / "transformer", self.dist)
        return teacher.eval()

    @contextlib.contextmanager
    def teacher_model(self):
        """The teacher: the frozen copy, or (LoRA) the student with its adapters switched off."""
        if self.teacher is not None:
            yield self.teacher
            return
        self.model.disable_adapters()
        try:
            yield self.model
        finally:
            self.model.enable_adapters()

    def target_model(self):
        if self.ema is not None:
            return self.ema.swapped_into(self.model)
        return contextlib.nullcontext(self.model)

    def autocast(self):
        dtype = self.compute_dtype()
        return torch.autocast(self.dist.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def draw(self, latents: torch.Tensor, embeds, mask, micro: int):
        """Per-sample noise and grid index (and caption dropout, in place), as SP ranks all draw them."""
        cfg = self.cfg
        noise = torch.empty_like(latents, device="cpu")
        index = torch.empty(len(latents), dtype=torch.long)
        for j in range(len(latents)):
            g = sample_generator(cfg.seed, self.step, micro, self.dp_rank * cfg.train_batch_size + j)
            noise[j] = torch.randn(latents.shape[1:], generator=g)
            index[j] = int(torch.randint(0, self.grid.num_points, (), generator=g))
            if torch.rand((), generator=g) < cfg.cfg:
                embeds[j] = 0
                mask[j] = False
        return noise.to(latents.device), index

    def forward_backward_step(self, batch: dict, micro: int) -> float:
        cfg, device, grid = self.cfg, self.dist.device, self.grid
        latents = batch["latents"].to(device, torch.float32)
        embeds = batch["prompt_embeds"].to(device, torch.float32)
        mask = batch["prompt_attention_mask"].to(device)
        noise, index = self.draw(latents, embeds, mask, micro)
        phases = phases_at(self.phase_schedule, self.step)
        end = torch.tensor([grid.phase_end(int(i), phases) for i in index])
        s_i, s_next, s_end = (grid.sigmas[k].to(device) for k in (index, index + 1, end))
        x_i = add_noise(latents, noise, s_i)

        def view(s: torch.Tensor) -> torch.Tensor:
            return s.view(-1, *([1] * (latents.dim() - 1)))

        with torch.no_grad(), self.autocast():
            with self.teacher_model() as teacher:
                v_teacher = self.adapter.predict_velocity(teacher, x_i, s_i, embeds, mask).float()
                if not cfg.not_apply_cfg_solver:
                    uncond = (torch.zeros_like(embeds), torch.zeros_like(mask))
                    v_uncond = self.adapter.predict_velocity(teacher, x_i, s_i, *uncond).float()
                    v_teacher = v_teacher + cfg.distill_cfg * (v_teacher - v_uncond)
            x_next = x_i + view(s_next - s_i) * v_teacher
            with self.target_model() as target:
                v_minus = self.adapter.predict_velocity(target, x_next, s_next, embeds, mask).float()
            f_target = x_next + view(s_end - s_next) * v_minus
        with self.autocast():
            v = self.adapter.predict_velocity(self.model, x_i, s_i, embeds, mask)
        f_student = x_i + view(s_end - s_i) * v.float()
        loss = pseudo_huber(f_student, f_target, cfg.huber_c)
        (loss / cfg.gradient_accumulation_steps).backward()
        return loss.item()

    def validation_settings(self, root: Path) -> list[tuple[Path, torch.Tensor, float]]:
        """Every step count (on the solver grid) times every guidance scale."""
        cfg = self.cfg
        return [
            (root / f"steps-{steps}_cfg-{guidance:g}", self.grid.sampling_sigmas(steps), guidance)
            for steps in cfg.step_counts
            for guidance in cfg.guidance_scales
        ]

    def export_scheduler(self) -> PCMFlowScheduler:
        return self.cfg.scheduler()
