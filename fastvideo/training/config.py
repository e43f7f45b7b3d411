"""The fine-tuning configuration: one typed dataclass, validated before any model is loaded.

Every field is a command-line flag of ``fastvideo/train.py`` (see ``fastvideo.cli``). Field values
are checked in ``__post_init__``; ``preflight(world_size)`` then checks them against the files and
the process count, which the launcher (``fastvideo.launch``) does once before any worker starts.
This module stays light (no diffusers import), so that check costs no more than importing torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fastvideo.models import MODEL_TYPES
from fastvideo.models.base import EXPERT_FOLDERS, boundary_ratio, component_fingerprint
from fastvideo.training.flow_matching import WEIGHTING_SCHEMES

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


# Families whose adapter maps LoRA modules to ComfyUI's names (ModelAdapter.comfyui_target).
COMFYUI_FAMILIES = ("mochi", "wan")


@dataclass
class TrainConfig:
    # Flags a resumed run may change: where and how fast it computes, for how long, and what it records.
    # Every other flag is part of the run's fingerprint (checkpoint.py), with the model and the data.
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume_from_checkpoint", "max_train_steps", "checkpointing_steps",
        "checkpoints_total_limit", "validation_steps", "validation_sampling_steps", "validation_guidance_scale",
        "validation_seeds", "collapse_fraction", "report_to", "sp_size", "dp_replicate", "dp_shard",
        "train_batch_size", "gradient_accumulation_steps",
        "activation_checkpointing", "ac_budget_gb", "compile", "cpu_offload", "attention_backend",
    })  # fmt: skip
    REFUSED_FLAGS: ClassVar[dict[str, str]] = {}

    output_dir: str = "outputs/finetune"
    """Checkpoints, metrics.jsonl, loss_curve.png, validation videos and the exported transformer."""
    model_type: str = "mochi"
    """Model family (adapter)."""
    model_path: str = "data/tiny-mochi"
    """Diffusers-layout model directory to fine-tune."""
    expert: str = ""
    """Two-expert folders (Wan 2.2 A14B) only, and required there: high trains transformer/ on noise levels
    >= the folder's boundary_ratio, low trains transformer_2/ below it (run twice to train both)."""
    data_json_path: str = "data/processed"
    """Preprocessed data: the folder holding videos2caption.json (or that file)."""
    seed: int = 0
    """Seeds data order, noise, timesteps and caption dropout: a run is a function of it."""
    max_train_steps: int = 20
    """Optimizer steps to train for."""
    train_batch_size: int = 1
    """Samples per data-parallel rank per micro-step."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step; the global batch is train_batch_size x data-parallel ranks x this."""
    learning_rate: float = 1e-5
    optimizer: str = "adamw"
    """adamw, adamw8bit (bitsandbytes, CUDA only) or prodigy (pip install prodigyopt; use lr 1.0)."""
    lr_scheduler: str = "constant"
    """One of diffusers' schedulers: constant, constant_with_warmup, linear, cosine, ..."""
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping; the norm is still logged)."""
    cfg: float = 0.1
    """Probability of dropping the caption (zero embedding, empty mask) for classifier-free guidance."""
    weighting_scheme: str = "uniform"
    """Noise-level sampling: uniform, logit_normal or mode."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0
    """Shift of the sampled noise levels (sigma' = s*sigma / (1 + (s-1)*sigma))."""
    sp_size: int = 1
    """Ulysses sequence-parallel degree (must divide the attention heads)."""
    dp_replicate: int = 1
    """HSDP replicas (e.g. nodes); 1 = plain FSDP."""
    dp_shard: int = -1
    """FSDP shard degree; -1 fills the world size."""
    activation_checkpointing: str = "none"
    """Blocks to recompute in backward: none, all, a count (4), a fraction (0.5) or auto."""
    ac_budget_gb: float = 0.0
    """Activation memory budget for activation_checkpointing=auto, in GiB."""
    compile: bool = False
    """torch.compile each transformer block (after checkpointing, before FSDP2): fuses element-wise work."""
    mixed_precision: str = "auto"
    """Compute dtype: auto (bf16 on GPU, fp32 on CPU), bf16 or fp32. Gradients are reduced in fp32."""
    master_weight_type: str = "fp32"
    """dtype of the sharded master weights and optimizer state: fp32 or bf16."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in host memory (FSDP2 offload; also on one GPU)."""
    use_lora: bool = False
    """Train LoRA adapters on a frozen base instead of all weights (exports lora/ instead of transformer/)."""
    lora_rank: int = 128
    lora_alpha: float = 256.0
    """LoRA scale is alpha / rank."""
    lora_target_modules: str = ""
    """Comma-separated module names inside the repeated blocks, or re:<regex> over full module names;
    empty: the family's default (Mochi: both attention streams; Wan: self- and cross-attention)."""
    lora_comfyui: bool = False
    """Also write the exported LoRA under ComfyUI's key names (lora/comfyui_lora.safetensors)."""
    lora_base_dtype: str = "auto"
    """dtype of the frozen base weights under LoRA: auto (the compute dtype: bf16 on GPU), bf16 or fp32."""
    id_token: str = ""
    """Trigger word the captions were prefixed with at preprocessing (ID_TOKEN); checked against the data."""
    use_ema: bool = False
    """Keep an EMA of the weights (sharded like them); validation and export also use it."""
    ema_decay: float = 0.999
    ema_start_step: int = 0
    checkpointing_steps: int = 0
    """Save a sharded checkpoint every this many steps (0: only at the end)."""
    checkpoints_total_limit: int = 0
    """Keep only the newest this many checkpoints (0: keep all)."""
    resume_from_checkpoint: str = ""
    """'latest' or a checkpoint directory; empty: start fresh. 'latest' refuses a checkpoint written with another
    model, data or hyperparameters; naming the directory accepts it. The process count may differ (elastic
    resume) as long as the global batch is the same."""
    validation_steps: int = 0
    """Sample the validation prompts every this many steps (0: never)."""
    validation_sampling_steps: int = 8
    validation_guidance_scale: float = 1.0
    validation_seeds: int = 1
    """Seeds per validation prompt; with 2 or more, validation logs each prompt's diversity across them (and
    always its motion) in validation/step-N/measures.json, printed and sent to wandb as means."""
    collapse_fraction: float = 0.0
    """Collapse guard: stop (naming why) when a validation pass's mean diversity across seeds or motion falls
    below this fraction of the reference's, measured before the first step (the teacher when distilling, the
    model as loaded when fine-tuning). 0: off; needs --validation_steps and --validation_seeds >= 2."""
    report_to: str = "none"
    """none or wandb (offline when WANDB_API_KEY is unset)."""
    attention_backend: str = "auto"
    """auto (flash-attn on CUDA when it is installed, else sdpa), sdpa or flash."""

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"--model_type must be one of {MODEL_TYPES}")
        positive = (
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "sp_size",
            "dp_replicate",
            "validation_seeds",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise ValueError("--learning_rate must be > 0")
        if not 0.0 <= self.cfg < 1.0:
            raise ValueError("--cfg is a probability in [0, 1)")
        if not 0.0 <= self.collapse_fraction < 1.0:
            raise ValueError("--collapse_fraction is a fraction of the reference's measures, in [0, 1)")
        if self.collapse_fraction and (not self.validation_steps or self.validation_seeds < 2):
            raise ValueError(
                "--collapse_fraction watches validation: it needs --validation_steps N and --validation_seeds 2 "
                "or more (diversity is measured across a prompt's seeds)"
            )
        if self.lora_comfyui and not (self.use_lora and self.model_type in COMFYUI_FAMILIES):
            raise ValueError(
                f"--lora_comfyui writes a LoRA export under ComfyUI's names: it needs --use_lora and a family "
                f"with a key mapping ({', '.join(COMFYUI_FAMILIES)}), got --model_type {self.model_type}"
            )
        if self.expert not in ("", *EXPERT_FOLDERS):
            raise ValueError(
                f"--expert must be one of {', '.join(EXPERT_FOLDERS)} (or empty), got {self.expert!r}"
            )
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"--weighting_scheme must be one of {WEIGHTING_SCHEMES}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr_scheduler must be one of {LR_SCHEDULERS}")
        if self.mixed_precision not in ("auto", "bf16", "fp32") or self.master_weight_type not in (
            "fp32",
            "bf16",
        ):
            raise ValueError("--mixed_precision is auto|bf16|fp32 and --master_weight_type fp32|bf16")
        if self.report_to not in ("none", "wandb"):
            raise ValueError("--report_to must be none or wandb")
        if self.activation_checkpointing == "auto" and self.ac_budget_gb <= 0:
            raise ValueError("--activation_checkpointing auto needs --ac_budget_gb > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}")
        if self.use_lora and (self.lora_rank < 1 or self.lora_alpha <= 0):
            raise ValueError("--lora_rank must be >= 1 and --lora_alpha > 0")
        if self.lora_base_dtype not in ("auto", "bf16", "fp32"):
            raise ValueError("--lora_base_dtype must be auto, bf16 or fp32")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError("--ema_decay must be in (0, 1)")
        from fastvideo.models.attention import BACKENDS

        if self.attention_backend not in BACKENDS:
            raise ValueError(f"--attention_backend must be one of {', '.join(BACKENDS)}")

    def global_batch(self, dp_size: int) -> int:
        """Samples per optimizer step over all data-parallel ranks and micro-steps."""
        return self.train_batch_size * dp_size * self.gradient_accumulation_steps

    def fingerprint(self) -> dict:
        """What defines this run's results: its flags (bar RESUME_MAY_CHANGE), the model and the data.

        Paths are replaced by their contents' fingerprints, so a moved folder still matches.
        """
        from fastvideo.dataset.latent_dataset import resolve_index

        run = {k: v for k, v in vars(self).items() if k not in self.RESUME_MAY_CHANGE}
        run["model_path"] = component_fingerprint(self.model_path, (self.transformer_folder(),))
        run["data_json_path"] = hashlib.sha256(resolve_index(self.data_json_path).read_bytes()).hexdigest()[
            :16
        ]
        return run

    def check_settings(self, world_size: int) -> None:
        """The flags against the files and the process count, without a process group or weights.

        Raises ValueError with a message that says what to change.
        """
        import torch

        from fastvideo.dataset.latent_dataset import read_index, resolve_index
        from fastvideo.models.attention import resolve_backend
        from fastvideo.parallel.dims import ParallelDims

        resolve_backend(self.attention_backend, "cuda" if torch.cuda.is_available() else "cpu")
        if self.optimizer == "adamw8bit" and not torch.cuda.is_available():
            raise ValueError("--optimizer adamw8bit (bitsandbytes) needs CUDA GPUs; use adamw on CPU")
        dims = ParallelDims(
            dp_replicate=self.dp_replicate, dp_shard=self.dp_shard, sp=self.sp_size, world_size=world_size
        )
        check_expert(self.model_path, self.expert)
        folder = self.transformer_folder()
        dims.validate_model(transformer_config(self.model_path, folder)["num_attention_heads"])
        index = resolve_index(self.data_json_path)
        read_index(index)
        check_id_token(self.id_token, index.parent)

    def transformer_folder(self) -> str:
        """The folder of the DiT this run trains (``--expert``'s, else ``transformer``)."""
        return EXPERT_FOLDERS[self.expert] if self.expert else "transformer"

    def preflight(self, world_size: int, check_output_dir: bool = True) -> None:
        """``check_settings``, that no live run holds --output_dir, and that the checkpoint to resume
        from fits this run (the launcher runs this once, before any worker starts)."""
        from fastvideo.lock import check_free
        from fastvideo.training.checkpoint import choose_checkpoint

        self.check_settings(world_size)
        if check_output_dir:
            check_free(self.output_dir)
        if self.resume_from_checkpoint:
            root = Path(self.output_dir) / "checkpoints"
            choose_checkpoint(root, self.resume_from_checkpoint, self.fingerprint(), repair=False)


def check_expert(model_path: str | Path, expert: str) -> None:
    """A two-expert folder needs ``--expert`` and a one-DiT folder refuses it (ValueError naming the fix)."""
    boundary = boundary_ratio(model_path)
    if boundary is not None and not expert:
        raise ValueError(
            f"{model_path} holds two noise-level experts (transformer/ for noise levels >= {boundary}, "
            "transformer_2/ below): pass --expert high or --expert low (EXPERT=high|low|both in the recipes)"
        )
    if expert and boundary is None:
        raise ValueError(f"--expert {expert}: {model_path} holds one DiT, not two noise-level experts")


def transformer_config(model_path: str | Path, folder: str = "transformer") -> dict:
    """The DiT's architecture, from ``<folder>/config.json`` (no weights loaded; ``_`` keys dropped)."""
    config = Path(model_path) / folder / "config.json"
    if not config.is_file():
        raise ValueError(
            f"{model_path} is not a diffusers model folder (no transformer/config.json); build the tiny default "
            "with `python -m fastvideo.models.tiny --output data/tiny-mochi` or download real weights"
        )
    return {k: v for k, v in json.loads(config.read_text()).items() if not k.startswith("_")}


def check_id_token(id_token: str, data_dir: Path) -> None:
    """Captions are embedded at preprocessing, so the trigger word must have been added there."""
    config_file = Path(data_dir) / "preprocess_config.json"
    used = json.loads(config_file.read_text()).get("id_token", "") if config_file.is_file() else ""
    if used != id_token:
        raise ValueError(
            f"--id_token {id_token!r} but {data_dir} was preprocessed with ID_TOKEN={used!r}; captions are "
            f"embedded at preprocessing: re-run it with ID_TOKEN={id_token!r} (or pass --id_token {used!r})"
        )
