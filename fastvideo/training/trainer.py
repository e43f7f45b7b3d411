"""The fine-tuning trainer: one class with short named steps.

    setup -> train -> train_step -> forward_backward_step -> validate -> save_checkpoint -> export -> cleanup

The DiT is a plain diffusers module. ``setup`` builds it on the meta device, hands it to
``fastvideo.parallel.parallelize`` (the family's sequence-parallel plan, activation checkpointing,
torch.compile per block with ``--compile``, FSDP2: in that order), then materialises it and loads
the weights (rank 0 reads them, the others receive their shards), so no rank ever holds more than
one full copy. Batches carry the family's conditioning record (``batch["cond"]``), which goes to
the adapter untouched.

Determinism: the noise, noise level and caption dropout of every sample come from a generator
seeded by (seed, step, the sample's position in the step's global batch), so a run is a function
of its config alone: the same on resume, and the same under any data/sequence-parallel layout or
split into micro-steps with the same global batch (ranks of one SP group draw identical numbers).

One live run per output folder: rank 0 holds ``fastvideo.lock.FolderLock`` on ``--output_dir``
from setup to cleanup, so a second run (a resume started by mistake, say) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from fastvideo.cli import RunError
from fastvideo.dataset.latent_dataset import BatchPrefetcher, LatentDataset, ShapeBucketSampler
from fastvideo.io import atomic_write_json
from fastvideo.lock import FolderLock, lock_on_main
from fastvideo.models import Condition, ModelAdapter, get_adapter_class
from fastvideo.models.attention import resolve_backend
from fastvideo.parallel.activation_checkpointing import (
    extrapolate_profile,
    profile_activations,
    resolve_policy,
)
from fastvideo.parallel.dims import ParallelDims
from fastvideo.parallel.parallelize import compile_blocks, parallelize
from fastvideo.parallel.process_group import DistInfo, single_process_group
from fastvideo.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from fastvideo.training.collapse import CollapseGuard
from fastvideo.training.config import TrainConfig
from fastvideo.training.ema import EMA
from fastvideo.training.export import (
    export_transformer,
    gather_full_state,
    load_transformer_weights,
    write_pipeline_folder,
)
from fastvideo.training.flow_matching import add_noise
from fastvideo.training.lora import add_lora, lora_weights, save_lora, with_lora_init, write_comfyui
from fastvideo.training.metrics import MetricsLogger, format_postfix
from fastvideo.training.objectives import make_objective
from fastvideo.training.validation import run_validation


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device):
    kwargs = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, eps=cfg.adam_eps, **kwargs)
    if cfg.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ValueError("--optimizer adamw8bit (bitsandbytes) needs CUDA GPUs; use adamw on CPU")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, eps=cfg.adam_eps, **kwargs)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise ValueError("--optimizer prodigy needs prodigyopt: pip install 'fastvideo[prodigy]'") from None
    return Prodigy(params, **kwargs)


__all__ = ["Trainer", "TrainingError", "compile_blocks", "make_optimizer", "sample_generator"]


def check_condition(adapter: ModelAdapter, dataset: LatentDataset) -> None:
    """The dataset must hold the model's whole conditioning record (e.g. an image-to-video model's image)."""
    missing = [k for k in adapter.condition_keys if k not in dataset.condition_keys]
    if missing:
        raise ValueError(
            f"{dataset.root} lacks {', '.join(missing)}, which {adapter.model_path} is conditioned on: preprocess "
            f"the videos with MODEL_PATH={adapter.model_path} (bash scripts/finetune_data_gen.sh)"
        )


class TrainingError(RunError):
    """A run that must stop (non-finite loss, ...); the message is for the user."""


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    """A distinct, reproducible stream per (step, the sample's position in the step's global batch)."""
    digest = hashlib.sha256(f"{seed}:{step}:{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


class Trainer:
    def __init__(self, cfg: TrainConfig, dist_info: DistInfo):
        self.cfg = cfg
        self.dist = dist_info
        self.step = 0
        self.lock: FolderLock | None = None
        self.batches: BatchPrefetcher | None = None
        self.logger: MetricsLogger | None = None
        self.other_expert: torch.nn.Module | None = None

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        cfg.check_settings(self.dist.world_size)
        self.lock = lock_on_main(cfg.output_dir, self.dist)
        if cfg.cpu_offload and self.dist.world_size == 1:
            single_process_group(self.dist.device)  # FSDP2 does the offloading, so it runs even over one GPU
        self.attention_backend = resolve_backend(cfg.attention_backend, self.dist.device)
        self.adapter: ModelAdapter = get_adapter_class(cfg.model_type)(
            cfg.model_path, device=self.dist.device, expert=cfg.expert
        )
        self.objective = make_objective(self.adapter, cfg)
        self.dims = ParallelDims(
            dp_replicate=cfg.dp_replicate,
            dp_shard=cfg.dp_shard,
            sp=cfg.sp_size,
            world_size=self.dist.world_size,
            device_type=self.dist.device.type,
        )
        self.dataset = LatentDataset(cfg.data_json_path)
        check_condition(self.adapter, self.dataset)
        self.dp_rank = self.dims.dp_mesh.get_local_rank() if self.dist.world_size > 1 else 0
        self.sampler = ShapeBucketSampler(
            self.dataset,
            batch_size=cfg.train_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dims.dp_size,
            accumulation=cfg.gradient_accumulation_steps,
            seed=cfg.seed,
        )
        self.model = self.build_model()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, self.trainable, self.dist.device)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.max_train_steps,
        )
        self.ema = (
            EMA(self.model, decay=cfg.ema_decay, start_step=cfg.ema_start_step) if cfg.use_ema else None
        )
        self.build_roles()
        self.checkpoints = CheckpointManager(
            cfg.output_dir,
            self.dist,
            keep_last=cfg.checkpoints_total_limit or None,
            fingerprint=cfg.fingerprint(),
        )
        resumed = self.maybe_resume()
        self.batches = BatchPrefetcher(self.sampler, self.dataset)
        self.logger = MetricsLogger(
            cfg.output_dir,
            enabled=self.dist.is_main,
            report_to=cfg.report_to,
            run_name=Path(cfg.output_dir).name,
            config=vars(cfg),
            resume=resumed,
        )
        if resumed:
            self.logger.truncate_after(self.step)
        self.guard = None
        if cfg.collapse_fraction:
            self.guard = CollapseGuard(cfg.collapse_fraction, Path(cfg.output_dir) / "validation", resumed)
            if self.guard.reference is None:
                self.measure_reference()
        if self.dist.is_main:
            atomic_write_json(vars(cfg), Path(cfg.output_dir) / "train_config.json")

    def build_roles(self) -> None:
        """Models beside the trained one (a distiller's critic), built before a resume restores their state.
        None for fine-tuning."""

    def compute_dtype(self) -> torch.dtype:
        mode = self.cfg.mixed_precision
        if mode == "auto":
            mode = "bf16" if self.dist.device.type == "cuda" else "fp32"
        return torch.bfloat16 if mode == "bf16" else torch.float32

    def lora_base_dtype(self) -> torch.dtype:
        choice = self.cfg.lora_base_dtype
        dtype = (
            self.compute_dtype()
            if choice == "auto"
            else {"bf16": torch.bfloat16, "fp32": torch.float32}[choice]
        )
        self.check_weight_dtype(dtype, "--lora_base_dtype")
        return dtype

    def uses_fsdp(self) -> bool:
        return self.dist.world_size > 1 or self.cfg.cpu_offload

    def check_weight_dtype(self, stored: torch.dtype, flag: str) -> None:
        """bf16 weights with fp32 compute need FSDP's cast: autocast has no fp32 mode to cast them up."""
        if stored != torch.float32 and self.compute_dtype() == torch.float32 and not self.uses_fsdp():
            raise ValueError(
                f"{flag} bf16 with fp32 compute needs FSDP to cast the weights up (several processes, or "
                "--cpu_offload); on one process use --mixed_precision bf16, or keep the weights in fp32"
            )

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        master = torch.bfloat16 if cfg.master_weight_type == "bf16" else torch.float32
        self.check_weight_dtype(master, "--master_weight_type")
        with torch.device("meta"):
            model = self.adapter.transformer_class().from_config(self.adapter.transformer_config())
            if master != torch.float32:
                model = model.to(master)
            if cfg.use_lora:
                add_lora(
                    model,
                    rank=cfg.lora_rank,
                    alpha=cfg.lora_alpha,
                    targets=self.lora_targets(),
                    base_dtype=self.lora_base_dtype(),
                    block_lists=self.adapter.block_lists,
                )
        compute = self.compute_dtype()
        self.ac_blocks = parallelize(
            model, self.adapter, self.dims,
            attention_backend=self.attention_backend,
            ac_policy=self.checkpoint_policy(model),
            compile=cfg.compile,
            fsdp=self.uses_fsdp(),
            # LoRA mixes bf16 base and fp32 adapter weights: one compute dtype unifies each block.
            param_dtype=compute if (compute != master or cfg.use_lora) else None,
            reduce_dtype=torch.float32,
            cpu_offload=cfg.cpu_offload,
        )  # fmt: skip
        if self.dist.is_main and cfg.activation_checkpointing != "none":
            print(f"activation checkpointing: blocks {self.ac_blocks} of {len(self.adapter.blocks(model))}")
        model.to_empty(device="cpu" if cfg.cpu_offload else self.dist.device)
        self.adapter.init_buffers(model)
        self.load_weights(model)
        if self.dist.is_main:
            print(f"layout: {self.describe_layout()}")
        return model.train()

    def describe_layout(self) -> str:
        cfg, dims = self.cfg, self.dims
        sharding = (
            "FSDP2" + (" with CPU offload" if cfg.cpu_offload else "") if self.uses_fsdp() else "no FSDP"
        )
        return (
            f"{self.dist.world_size} process(es) on {self.dist.device.type}: dp_replicate {dims.dp_replicate} x "
            f"dp_shard {dims.dp_shard} x sp {dims.sp}, {sharding}; global batch {cfg.global_batch(dims.dp_size)} "
            f"({cfg.train_batch_size} x {dims.dp_size} data-parallel x {cfg.gradient_accumulation_steps} micro-steps); "
            f"{str(self.compute_dtype()).removeprefix('torch.')} compute, {self.attention_backend} attention"
        )

    def load_weights(self, model: torch.nn.Module, folder: Path | None = None) -> None:
        """Fill the materialised model: ``folder`` (default the model folder's transformer), plus fresh LoRA
        adapters from the seed."""
        cfg = self.cfg
        prepare = (lambda full, targets: with_lora_init(full, targets, cfg.seed)) if cfg.use_lora else None
        folder = folder or self.adapter.model_path / self.adapter.transformer_folder
        load_transformer_weights(model, folder, self.dist, prepare=prepare)

    def lora_targets(self) -> str:
        return self.cfg.lora_target_modules or self.adapter.lora_targets

    def checkpoint_policy(self, model):
        spec, attrs = self.cfg.activation_checkpointing, self.adapter.block_lists
        if spec != "auto":
            return resolve_policy(spec, blocks_attrs=attrs)
        budget = int(self.cfg.ac_budget_gb * 2**30)
        return resolve_policy(
            spec,
            budget_bytes=budget,
            profile=self.probe_activations(len(self.adapter.blocks(model))),
            blocks_attrs=attrs,
        )

    def probe_activations(self, depth: int):
        """Size the activations of a 2-block copy of the DiT on the real device, batch shape and dtype."""
        config = {**self.adapter.transformer_config(), "num_layers": 2}
        with torch.device(self.dist.device):  # initialised where it runs: no CPU init of GPU-sized blocks
            probe_model = self.adapter.transformer_class().from_config(config).to(self.compute_dtype())
        sp_group = self.dims.sp_mesh.get_group() if self.dims.sp_enabled else None
        self.adapter.set_attention(probe_model, sp_group, self.attention_backend)
        item, b = self.dataset[0], self.cfg.train_batch_size
        device, dtype = self.dist.device, self.compute_dtype()
        latents = torch.zeros(b, *item["latents"].shape, device=device, dtype=dtype)
        # The first item's real conditioning, at the real shape and dtype.
        cond = {
            k: torch.stack([v] * b).to(device, dtype if v.is_floating_point() else v.dtype)
            for k, v in item["cond"].items()
        }
        sigmas = torch.full((b,), 0.5, device=device)

        def forward():
            return self.adapter.predict_velocity(probe_model, latents, sigmas, cond)

        attrs = self.adapter.block_lists
        return extrapolate_profile(profile_activations(probe_model, forward, blocks_attrs=attrs), depth)

    def maybe_resume(self) -> bool:
        if not self.cfg.resume_from_checkpoint:
            return False
        path = self.checkpoints.find(self.cfg.resume_from_checkpoint)
        if path is None:
            if self.dist.is_main:
                print(f"no complete checkpoint under {self.checkpoints.root}; starting from step 0")
            return False
        trainer_state, rank_state = self.checkpoints.load(path, self.app_state())
        self.sampler.load_state_dict(trainer_state["data"])
        self.restore_app_state()
        self.step = trainer_state["step"]
        self.lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
        if self.dist.is_main:
            print(f"resumed from {path} at step {self.step}")
        return True

    # --- state ----------------------------------------------------------------------------------
    def app_state(self) -> dict:
        """The sharded tensors DCP saves and loads in place."""
        self._app_state = {
            "model": get_model_state_dict(self.model, options=self.state_options()),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
        }
        if self.ema is not None:
            self._app_state["ema"] = self.ema.state_dict()
        return self._app_state

    def state_options(self) -> StateDictOptions:
        # Under LoRA the frozen base is never saved: it is the model directory's, unchanged.
        return StateDictOptions(ignore_frozen_params=self.cfg.use_lora, strict=not self.cfg.use_lora)

    def restore_app_state(self) -> None:
        state = self._app_state
        set_model_state_dict(self.model, state["model"], options=self.state_options())
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def trainer_state(self) -> dict:
        """What every rank shares: the step, the LR schedule and the data position (in global samples)."""
        return {
            "step": self.step,
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "data": self.batches.state_dict(),
        }

    # --- training -------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        bar = tqdm(
            total=cfg.max_train_steps,
            initial=self.step,
            desc="train",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        while self.step < cfg.max_train_steps:
            metrics = self.train_step()
            bar.update(1)
            bar.set_postfix_str(format_postfix(**metrics))
            if cfg.checkpointing_steps and self.step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
            if cfg.validation_steps and self.step % cfg.validation_steps == 0:
                self.validate()
        bar.close()
        if self.dist.is_main:
            atomic_write_json(self.memory_report(), Path(cfg.output_dir) / "memory.json")
        if not cfg.checkpointing_steps or self.step % cfg.checkpointing_steps:
            self.save_checkpoint()

    def train_step(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = 0.0, 0
        for _ in range(cfg.gradient_accumulation_steps):
            batch = self.batches.next()
            loss_sum += self.forward_backward_step(batch)
            tokens += self.tokens_in(batch["latents"])
        grad_norm = self.clip_gradients()
        loss = self.mean_over_dp(loss_sum / cfg.gradient_accumulation_steps)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingError(
                f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.step + 1} "
                f"(loss {loss}, grad norm {grad_norm}); stopped before the optimizer step, so no checkpoint holds "
                "it. Lower --learning_rate or check the data."
            )
        self.optimizer.step()
        lr = self.advance()
        step_time = time.perf_counter() - started
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_time": step_time,
            "tokens_per_s": tokens * self.dims.dp_size / step_time,
        }
        self.logger.log(self.step, **metrics)
        return metrics

    def forward_backward_step(self, batch: dict) -> float:
        cfg = self.cfg
        device = self.dist.device
        latents = batch["latents"].to(device, torch.float32)
        cond = self.condition_on_device(batch["cond"])
        generators = self.sample_generators(batch)
        noise = self.draw_noise(latents, generators)
        sigmas = torch.cat([self.objective.draw_sigma(g) for g in generators]).to(device)
        sigmas = self.in_expert_range(sigmas)
        self.drop_captions(cond, generators)
        noisy = add_noise(latents, noise, sigmas)
        with self.autocast():
            pred = self.adapter.predict_velocity(self.model, noisy, sigmas, cond)
        loss = self.objective.loss(pred, latents, noise, sigmas)
        (loss / cfg.gradient_accumulation_steps).backward()
        return loss.item()

    def in_expert_range(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Noise levels drawn over (0, 1], mapped linearly onto the trained expert's range (``--expert``)."""
        if not self.cfg.expert:
            return sigmas
        low, high = self.adapter.sigma_range()
        return low + (high - low) * sigmas

    def autocast(self):
        dtype = self.compute_dtype()
        return torch.autocast(self.dist.device.type, dtype=dtype, enabled=dtype != torch.float32)

    # --- per-sample randomness (shared with the distiller) -----------------------------------------
    def sample_generators(self, batch: dict) -> list[torch.Generator]:
        """One generator per sample, keyed on (seed, step, its position in the global batch)."""
        return [sample_generator(self.cfg.seed, self.step, int(p)) for p in batch["position"]]

    @staticmethod
    def draw_noise(latents: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Each sample's noise: the first draw of its generator."""
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
        return noise.to(latents.device)

    def condition_on_device(self, cond: Condition) -> Condition:
        """A batch's conditioning record on the device: embeddings float32, masks as they are."""
        device = self.dist.device
        return {
            k: v.to(device, torch.float32) if v.is_floating_point() else v.to(device) for k, v in cond.items()
        }

    def null_condition(self, like: Condition) -> Condition:
        """The family's unconditional input for a batch shaped like ``like`` (caption dropout, CFG)."""
        return self.adapter.null_condition(like, self.dataset.null_condition)

    def drop_captions(self, cond: Condition, generators: list[torch.Generator]) -> None:
        """Caption dropout in place, the last draw of each generator: a dropped sample's conditioning
        becomes the family's unconditional input (Mochi: a zero embedding with an empty mask, as
        FastVideo's Mochi; Wan: the encoded empty prompt)."""
        dropped = [j for j, g in enumerate(generators) if torch.rand((), generator=g) < self.cfg.cfg]
        if not dropped:
            return
        null = self.null_condition(cond)
        for name, tensor in cond.items():
            tensor[dropped] = null[name][dropped]

    def tokens_in(self, latents: torch.Tensor) -> int:
        """Transformer tokens in a latent batch [B, C, T, h, w] (after spatial patchify)."""
        rules = self.adapter.rules
        return latents.numel() // latents.shape[1] // rules.patch_size**2 // rules.temporal_patch

    def advance(self) -> float:
        """After the optimizer step(s): the LR schedule, the step count and the EMA move on. Returns the lr
        the step used."""
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.step)
        return lr

    def clip_gradients(self) -> float:
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def mean_over_dp(self, value: float) -> float:
        if self.dist.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.dist.device)
        dist.all_reduce(t)  # SP ranks of a group hold the same value: divide by the world size
        return float(t.item()) / self.dist.world_size

    # --- validation, checkpoints, export ----------------------------------------------------------
    def validate(self) -> None:
        root = Path(self.cfg.output_dir) / "validation" / f"step-{self.step:08d}"
        passes = {}
        with self.ema.swapped_into(self.model) if self.ema is not None else contextlib.nullcontext():
            self.model.eval()
            for out, sigmas, guidance in self.validation_settings(root):
                with self.autocast():  # as in training: bf16 weights on one process need it
                    measures = run_validation(self, out, sigmas=sigmas, guidance=guidance)
                self.logger.log_videos(self.step, out)
                if measures is not None:
                    passes[out.relative_to(root).as_posix() if out != root else "validation"] = measures
            self.model.train()
        self.logger.log_measures(self.step, passes)
        if self.guard is not None and passes:
            reason = self.guard.check(self.step, passes, self.dist.is_main)
            if reason:
                raise TrainingError(reason)

    def measure_reference(self) -> None:
        """The collapse guard's reference (``collapse_reference``), measured once before the first step."""
        root = Path(self.cfg.output_dir) / "validation" / "reference"
        with self.collapse_reference() as (model, sigmas, guidance), self.autocast():
            model.eval()
            measures = run_validation(self, root, sigmas=sigmas, guidance=guidance, model=model, write=False)
        self.model.train()  # the reference may have been the trained model itself (fine-tuning, LoRA's base)
        if measures is None:
            raise TrainingError(
                f"--collapse_fraction needs validation prompts; {self.dataset.root} has none (preprocess with "
                "--validation_prompt_txt)"
            )
        self.guard.set_reference(measures, self.dist.is_main)
        if self.dist.is_main:
            print(
                f"collapse guard: reference diversity {measures['diversity']:.4g}, motion {measures['motion']:.4g}"
            )

    @contextlib.contextmanager
    def collapse_reference(self):
        """(model, sigmas, guidance) the collapse guard's reference samples with: fine-tuning's is the model as
        loaded, sampled as validation samples (the config's steps on the family's schedule and guidance)."""
        yield self.sampling_model(), None, None

    def sampling_model(self) -> torch.nn.Module:
        """What validation samples with: the trained DiT, and under ``--expert`` the folder's other expert
        beside it (frozen, whole on every rank, loaded on first use), switched at the boundary."""
        if not self.cfg.expert:
            return self.model
        from fastvideo.models.experts import NoiseExperts

        if self.other_expert is None:
            self.other_expert = self.load_other_expert()
        pair = (
            (self.model, self.other_expert) if self.cfg.expert == "high" else (self.other_expert, self.model)
        )
        return NoiseExperts(*pair, self.adapter.boundary_ratio())

    def load_other_expert(self) -> torch.nn.Module:
        other = "low" if self.cfg.expert == "high" else "high"
        folder = self.adapter.model_path / self.adapter.expert_folders()[other]
        model = self.adapter.transformer_class().from_pretrained(folder, torch_dtype=self.compute_dtype())
        model = model.to(self.dist.device).eval().requires_grad_(False)
        sp_group = self.dims.sp_mesh.get_group() if self.dims.sp_enabled else None
        self.adapter.set_attention(model, sp_group, self.attention_backend)
        return model

    def validation_settings(self, root: Path) -> list[tuple[Path, torch.Tensor | None, float | None]]:
        """(folder, sigmas, guidance) per validation pass; None: the config's steps and guidance."""
        return [(root, None, None)]

    def save_checkpoint(self) -> None:
        path = self.checkpoints.save(self.step, self.app_state(), self.trainer_state(), {"rng": rng_state()})
        if self.dist.is_main:
            print(f"saved checkpoint {path}")

    def export_name(self) -> str:
        """The exported weights' folder: the trained DiT's (``transformer``, ``transformer_2`` for the low-noise
        expert), or under LoRA ``lora`` (``lora_2`` for the low-noise expert, which the sampler loads into it)."""
        folder = self.adapter.transformer_folder
        if not self.cfg.use_lora:
            return folder
        return "lora" + folder.removeprefix("transformer")

    def other_expert_lora(self) -> tuple[str, ...]:
        """The LoRA folder of the expert this run leaves unchanged (``--expert``), which the output keeps
        from the base; a LoRA of the trained DiT itself was made for other weights and is never kept."""
        if not self.cfg.expert:
            return ()
        return ("lora_2",) if self.cfg.expert == "high" else ("lora",)

    def export(self) -> None:
        out = Path(self.cfg.output_dir)
        name = self.export_name()
        self.export_weights(out / name)
        if self.ema is not None:
            with self.ema.swapped_into(self.model):
                self.export_weights(out / f"{name}_ema")
        if self.dist.is_main:
            base = Path(self.cfg.model_path)
            missing = write_pipeline_folder(
                out, base, self.export_scheduler(), trained=name, keep=self.other_expert_lora()
            )
            if missing:
                print(f"warning: {out} is not a whole pipeline folder; missing {', '.join(missing)}")
            else:
                print(f"pipeline folder {out}: --model_path and diffusers' from_pretrained load it")
        self.dist.barrier()

    def export_scheduler(self):
        """The scheduler saved with the exported model; None links the base model's."""
        return None

    def export_weights(self, out: Path) -> None:
        cfg = self.cfg
        if not cfg.use_lora:
            export_transformer(self.model, self.adapter, out, self.dist)
            return
        weights = lora_weights(gather_full_state(self.model, trainable_only=True))
        if self.dist.is_main:
            save_lora(
                out,
                weights,
                rank=cfg.lora_rank,
                alpha=cfg.lora_alpha,
                targets=self.lora_targets(),
                adapter=self.adapter,
            )
            if cfg.lora_comfyui:
                write_comfyui(out, self.adapter)
        self.dist.barrier()

    def memory_report(self) -> dict:
        """Bytes this rank holds in parameters, gradients and optimizer state (local shards)."""

        def nbytes(tensors) -> int:
            return sum(_local(t).numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

        params = list(self.model.parameters())
        optim = [v for state in self.optimizer.state.values() for v in state.values()]
        report = {
            "parameters": nbytes(params),
            "trainable_parameters": nbytes(p for p in params if p.requires_grad),
            "gradients": nbytes(p.grad for p in params if p.grad is not None),
            "optimizer_state": nbytes(optim),
        }
        report["total"] = report["parameters"] + report["gradients"] + report["optimizer_state"]
        return report

    def cleanup(self) -> None:
        if self.batches is not None:
            self.batches.close()
        if self.logger is not None:
            self.logger.close()
        if self.lock is not None:
            self.lock.release()

    def run(self) -> None:
        try:
            self.setup()
            self.train()
            self.export()
        finally:
            self.cleanup()
