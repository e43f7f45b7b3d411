"""The fine-tuning configuration: one typed dataclass, validated before any model is loaded.

Every field is a command-line flag of ``fastvideo/train.py`` (see ``fastvideo.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastvideo.models import MODEL_TYPES
from fastvideo.training.flow_matching import WEIGHTING_SCHEMES
from fastvideo.training.lora import DEFAULT_TARGETS

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig:
    output_dir: str = "outputs/finetune"
    """Checkpoints, metrics.jsonl, loss_curve.png, validation videos and the exported transformer."""
    model_type: str = "mochi"
    """Model family (adapter)."""
    model_path: str = "data/tiny-mochi"
    """Diffusers-layout model directory to fine-tune."""
    data_json_path: str = "data/processed"
    """Preprocessed data: the folder holding videos2caption.json (or that file)."""
    seed: int = 0
    """Seeds data order, noise, timesteps and caption dropout: a run is a function of it."""
    max_train_steps: int = 20
    """Optimizer steps to train for."""
    train_batch_size: int = 1
    """Samples per data-parallel rank per micro-step."""
    gradient_accumulation_steps: int = 1
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
    """Keep sharded parameters, gradients and optimizer state in host memory (FSDP2 offload)."""
    use_lora: bool = False
    """Train LoRA adapters on a frozen base instead of all weights (exports lora/ instead of transformer/)."""
    lora_rank: int = 128
    lora_alpha: float = 256.0
    """LoRA scale is alpha / rank."""
    lora_target_modules: str = DEFAULT_TARGETS
    """Comma-separated module names inside the transformer blocks, or re:<regex> over full module names."""
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
    """'latest' or a checkpoint directory; empty: start fresh."""
    validation_steps: int = 0
    """Sample the validation prompts every this many steps (0: never)."""
    validation_sampling_steps: int = 8
    validation_guidance_scale: float = 1.0
    report_to: str = "none"
    """none or wandb (offline when WANDB_API_KEY is unset)."""

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"--model_type must be one of {MODEL_TYPES}")
        positive = (
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "sp_size",
            "dp_replicate",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise ValueError("--learning_rate must be > 0")
        if not 0.0 <= self.cfg < 1.0:
            raise ValueError("--cfg is a probability in [0, 1)")
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
