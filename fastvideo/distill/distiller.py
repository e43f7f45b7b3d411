"""Phased consistency distillation (PCM, flow-matching form) on the fine-tuning machinery.

``Distiller`` subclasses the fine-tuning ``Trainer`` and overrides only its configuration, the
teacher's setup and the loss step. One step, per sample (the grid index, noise and caption dropout
come from the same seeded per-sample generator as fine-tuning, so SP ranks agree):

1. draw a solver-grid index i; x_i = (1 - s_i) x0 + s_i noise;
2. the frozen teacher takes one Euler step to s_{i+1}, with classifier-free guidance
   v_T = v_c + w (v_c - v_u) against the family's unconditional input (``--distill_cfg`` w;
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
from pathlib import Path

import torch

from fastvideo.distill.config import DistillConfig
from fastvideo.distill.pcm import PCMFlowScheduler, parse_phase_schedule, phases_at, pseudo_huber
from fastvideo.parallel.parallelize import parallelize
from fastvideo.training.export import load_transformer_weights
from fastvideo.training.flow_matching import add_noise
from fastvideo.training.trainer import Trainer


class Distiller(Trainer):
    cfg: DistillConfig

    def setup(self) -> None:
        super().setup()
        cfg = self.cfg
        self.grid = self.export_scheduler().grid
        self.phase_schedule = parse_phase_schedule(cfg.multi_phased_distill_schedule)
        # Under LoRA the default teacher is the base itself (adapters off); a named teacher is its own copy.
        self.teacher = self.build_teacher() if not cfg.use_lora or cfg.teacher_model_path else None

    def build_teacher(self) -> torch.nn.Module:
        """A frozen copy of the DiT in the compute dtype, sharded and sequence-parallel like the student."""
        cfg = self.cfg
        path = Path(cfg.teacher_model_path or cfg.model_path)
        with torch.device("meta"):
            teacher = self.adapter.transformer_class().from_config(self.adapter.transformer_config())
            teacher = teacher.to(self.compute_dtype()).requires_grad_(False)
        parallelize(
            teacher, self.adapter, self.dims,
            attention_backend=self.attention_backend, fsdp=self.uses_fsdp(), reduce_dtype=torch.float32,
        )  # fmt: skip
        teacher.to_empty(device=self.dist.device)
        self.adapter.init_buffers(teacher)
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

    @contextlib.contextmanager
    def collapse_reference(self):
        """The collapse guard's reference: the teacher, ``--collapse_reference_steps`` Euler steps on the family's
        schedule, guided as it is distilled (1 + ``--distill_cfg``)."""
        with self.teacher_model() as teacher:
            sigmas = self.adapter.default_sigmas(self.cfg.collapse_reference_steps)
            yield teacher, sigmas, 1.0 + self.cfg.distill_cfg

    def target_model(self):
        if self.ema is not None:
            return self.ema.swapped_into(self.model)
        return contextlib.nullcontext(self.model)

    def forward_backward_step(self, batch: dict) -> float:
        cfg, device, grid = self.cfg, self.dist.device, self.grid
        latents = batch["latents"].to(device, torch.float32)
        cond = self.condition_on_device(batch["cond"])
        # Per sample, as fine-tuning draws them (so SP ranks agree): noise, grid index, caption dropout.
        generators = self.sample_generators(batch)
        noise = self.draw_noise(latents, generators)
        index = torch.tensor([int(torch.randint(0, grid.num_points, (), generator=g)) for g in generators])
        self.drop_captions(cond, generators)
        phases = phases_at(self.phase_schedule, self.step)
        end = torch.tensor([grid.phase_end(int(i), phases) for i in index])
        s_i, s_next, s_end = (grid.sigmas[k].to(device) for k in (index, index + 1, end))
        x_i = add_noise(latents, noise, s_i)

        def view(s: torch.Tensor) -> torch.Tensor:
            return s.view(-1, *([1] * (latents.dim() - 1)))

        with torch.no_grad(), self.autocast():
            with self.teacher_model() as teacher:
                v_teacher = self.adapter.predict_velocity(teacher, x_i, s_i, cond).float()
                if not cfg.not_apply_cfg_solver:
                    v_uncond = self.adapter.predict_velocity(
                        teacher, x_i, s_i, self.null_condition(cond)
                    ).float()
                    v_teacher = v_teacher + cfg.distill_cfg * (v_teacher - v_uncond)
            x_next = x_i + view(s_next - s_i) * v_teacher
            with self.target_model() as target:
                v_minus = self.adapter.predict_velocity(target, x_next, s_next, cond).float()
            f_target = x_next + view(s_end - s_next) * v_minus
        with self.autocast():
            v = self.adapter.predict_velocity(self.model, x_i, s_i, cond)
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
        return self.cfg.scheduler(self.adapter)
