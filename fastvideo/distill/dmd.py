"""DMD2: distribution matching distillation with a trainable critic, on the distiller's machinery.

    python -m fastvideo.distill --method dmd2 --model_path ... --data_json_path ... --output_dir ...
    bash scripts/distill_dmd_t2v.sh

Three roles (Yin et al. 2024, "Improved Distribution Matching Distillation", arXiv:2405.14867):

* the **generator**, the trained model (``self.model``, EMA'd with ``--use_ema``): from each noise level of
  ``--dmd_noise_levels`` (FastVideo's 1000, 757, 522 / 1000) it predicts clean latents;
* the **real score**, the frozen teacher (``Distiller.build_teacher``), guided with ``--distill_cfg`` w as
  ``v_c + w (v_c - v_u)`` against the family's unconditional input;
* the **fake score**, a critic: a trainable copy of the teacher built as the generator is (the same
  FSDP2 + SP layout; under ``--use_lora`` the base plus its own adapters, the real score then being the
  generator's base with its adapters off), with its own AdamW (``--critic_learning_rate``), trained every
  step by flow matching on the generator's output.
  The generator steps every ``--generator_update_interval`` steps.

One step, per sample, every random draw from the sample's seeded generator (so SP ranks, layouts and
resumes agree), in this order: noise, a level index k, then for the scores t and noise', for the
critic t'' and noise'':

1. ``x_k = (1 - s_k) x0 + s_k noise`` (the data's latents noised, as FastVideo feeds its generator) and
   the generator's clean latents ``g = x_k - s_k v_G(x_k)``;
2. generator turn: ``x_t = (1 - t) g + t noise'`` with t uniform in [--dmd_min_noise, --dmd_max_noise];
   the real and fake scores' clean latents r and f (no gradients); the direction
   ``(f - r) / mean|g - r|`` per sample; loss ``0.5 * mean((g - sg(g - direction))^2)``, whose gradient
   with respect to g is that direction;
3. critic turn (every step): ``x = (1 - t'') sg(g) + t'' noise''``; the critic's flow-matching MSE
   against ``noise'' - sg(g)``.

Checkpoints hold both trained roles and both optimizers (and the generator's EMA), so a run killed with
``kill -9`` resumes exactly. The output folder is a diffusers pipeline whose ``scheduler/`` is a
``FewStepFlowScheduler`` over the generator's levels; the critic is not exported.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from fastvideo.distill.distiller import Distiller
from fastvideo.training.flow_matching import add_noise, velocity_target
from fastvideo.training.trainer import Trainer, TrainingError, make_optimizer


class DMDDistiller(Distiller):
    """Generator (the trained model), frozen teacher (real score) and trainable critic (fake score)."""

    def setup(self) -> None:
        # The fine-tuning setup, which builds the teacher and critic (``build_roles``) before any resume;
        # none of PCM's solver grid.
        Trainer.setup(self)
        self.levels = torch.tensor(self.cfg.noise_levels())

    def build_roles(self) -> None:
        cfg = self.cfg
        # Under LoRA the real score is the generator's base with its adapters off, unless a teacher is named.
        self.teacher = self.build_teacher() if not cfg.use_lora or cfg.teacher_model_path else None
        self.critic = self.build_critic()
        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        critic_cfg = replace(cfg, learning_rate=cfg.critic_learning_rate or cfg.learning_rate)
        self.critic_optimizer = make_optimizer(critic_cfg, self.critic_params, self.dist.device)

    def build_critic(self) -> torch.nn.Module:
        """Built as the generator is (master dtype, LoRA, activation checkpointing, compile, FSDP2 + SP), from
        the teacher's weights (``--teacher_model_path``, default MODEL_PATH): a second trained model."""
        critic = self.build_model()
        if self.cfg.teacher_model_path:
            self.load_weights(critic, Path(self.cfg.teacher_model_path) / "transformer")
        return critic

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        generator_turn = self.step % cfg.generator_update_interval == 0
        self.optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        losses, critic_losses, tokens = 0.0, 0.0, 0
        for _ in range(cfg.gradient_accumulation_steps):
            batch = self.batches.next()
            loss, critic_loss = self.forward_backward_step(batch, generator_turn)
            losses, critic_losses = losses + loss, critic_losses + critic_loss
            tokens += self.tokens_in(batch["latents"])
        grad_norm = self.clip_gradients() if generator_turn else 0.0
        critic_grad_norm = self.clip(self.critic_params)
        loss = self.mean_over_dp(losses / cfg.gradient_accumulation_steps) if generator_turn else None
        critic_loss = self.mean_over_dp(critic_losses / cfg.gradient_accumulation_steps)
        checked = {
            "critic loss": critic_loss,
            "critic gradient norm": critic_grad_norm,
            "gradient norm": grad_norm,
        }
        if loss is not None:
            checked["loss"] = loss
        bad = [name for name, value in checked.items() if not math.isfinite(value)]
        if bad:
            raise TrainingError(
                f"non-finite {bad[0]} at step {self.step + 1} ({checked}); stopped before the optimizer steps, so "
                "no checkpoint holds it. Lower --learning_rate / --critic_learning_rate or check the data."
            )
        if generator_turn:
            self.optimizer.step()
        self.critic_optimizer.step()
        lr = self.advance()
        step_time = time.perf_counter() - started
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm if generator_turn else None,
            "critic_loss": critic_loss,
            "critic_grad_norm": critic_grad_norm,
            "step_time": step_time,
            "tokens_per_s": tokens * self.dims.dp_size / step_time,
        }
        self.logger.log(self.step, **metrics)
        return {k: v for k, v in metrics.items() if v is not None}

    def clip(self, params: list[torch.nn.Parameter]) -> float:
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def forward_backward_step(self, batch: dict, generator_turn: bool = True) -> tuple[float, float]:
        """Backward of the generator's DMD loss (on its turn) and of the critic's loss; returns both values."""
        cfg, device = self.cfg, self.dist.device
        latents = batch["latents"].to(device, torch.float32)
        cond = self.condition_on_device(batch["cond"])
        draws = self.draw(latents, self.sample_generators(batch))
        s_k = self.levels.to(device)[draws["level"]]
        x_k = add_noise(latents, draws["noise"], s_k)
        with torch.set_grad_enabled(generator_turn), self.autocast():
            v = self.adapter.predict_velocity(self.model, x_k, s_k, cond)
        generated = x_k - view(s_k, latents) * v.float()
        loss = 0.0
        if generator_turn:
            direction = self.dmd_direction(
                generated.detach(), draws["score_noise"], draws["score_level"], cond
            )
            dmd_loss = 0.5 * F.mse_loss(generated, (generated - direction).detach())
            (dmd_loss / cfg.gradient_accumulation_steps).backward()
            loss = dmd_loss.item()
        clean = generated.detach()
        x = add_noise(clean, draws["critic_noise"], draws["critic_level"])
        with self.autocast():
            v_critic = self.adapter.predict_velocity(self.critic, x, draws["critic_level"], cond)
        critic_loss = F.mse_loss(v_critic.float(), velocity_target(clean, draws["critic_noise"]))
        (critic_loss / cfg.gradient_accumulation_steps).backward()
        return loss, critic_loss.item()

    @torch.no_grad()
    def dmd_direction(self, generated, noise, level, cond) -> torch.Tensor:
        """``(f - r) / mean|g - r|`` per sample: the fake and real scores' clean latents of ``generated``
        noised to ``level``, the real one guided (``--distill_cfg``)."""
        x = add_noise(generated, noise, level)
        s = view(level, generated)
        with self.autocast():
            with self.teacher_model() as teacher:
                v_real = self.adapter.predict_velocity(teacher, x, level, cond).float()
                if self.cfg.distill_cfg:
                    v_uncond = self.adapter.predict_velocity(
                        teacher, x, level, self.null_condition(cond)
                    ).float()
                    v_real = v_real + self.cfg.distill_cfg * (v_real - v_uncond)
            v_fake = self.adapter.predict_velocity(self.critic, x, level, cond).float()
        real, fake = x - s * v_real, x - s * v_fake
        scale = (generated - real).abs().flatten(1).mean(1).clamp_min(1e-12)
        return torch.nan_to_num((fake - real) / view(scale, generated))

    def draw(self, latents: torch.Tensor, generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
        """Every random number of one step, per sample, in the order the module docstring gives."""
        cfg, shape, device = self.cfg, latents.shape[1:], latents.device
        low, high = cfg.dmd_min_noise, cfg.dmd_max_noise
        per_sample = []
        for g in generators:
            noise = torch.randn(shape, generator=g)
            level = torch.randint(0, len(self.levels), (), generator=g)
            score_level = low + (high - low) * torch.rand((), generator=g)
            score_noise = torch.randn(shape, generator=g)
            critic_level = low + (high - low) * torch.rand((), generator=g)
            critic_noise = torch.randn(shape, generator=g)
            per_sample.append((noise, level, score_level, score_noise, critic_level, critic_noise))
        names = ("noise", "level", "score_level", "score_noise", "critic_level", "critic_noise")
        return {
            name: torch.stack(values).to(device)
            for name, values in zip(names, zip(*per_sample, strict=True), strict=True)
        }

    # --- state, validation, export ----------------------------------------------------------------
    def app_state(self) -> dict:
        state = super().app_state()
        state["critic"] = get_model_state_dict(self.critic, options=self.state_options())
        state["critic_optimizer"] = get_optimizer_state_dict(self.critic, self.critic_optimizer)
        return state

    def restore_app_state(self) -> None:
        super().restore_app_state()
        set_model_state_dict(self.critic, self._app_state["critic"], options=self.state_options())
        set_optimizer_state_dict(self.critic, self.critic_optimizer, self._app_state["critic_optimizer"])

    def validation_settings(self, root: Path) -> list[tuple[Path, torch.Tensor, float]]:
        """Every step count (the first k noise levels) times every guidance scale."""
        cfg, scheduler = self.cfg, self.export_scheduler()
        return [
            (root / f"steps-{steps}_cfg-{guidance:g}", scheduler.sampling_sigmas(steps), guidance)
            for steps in cfg.step_counts
            for guidance in cfg.guidance_scales
        ]

    def export_scheduler(self):
        return self.cfg.few_step_scheduler(self.adapter)


def view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] shaped to broadcast over ``like`` [B, ...]."""
    return values.view(-1, *([1] * (like.dim() - 1)))
