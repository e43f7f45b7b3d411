"""LoRA on a plain diffusers DiT through peft (diffusers' adapter API), and its files.

    python -m fastvideo.training.lora fuse --model_path data/tiny-mochi \
        --lora_path outputs/lora-mochi/lora --output outputs/fused-transformer

Training: ``add_lora`` injects rank-``r`` adapters into the attention projections of the
transformer blocks (video and text streams) and freezes everything else; the frozen base is cast
to ``base_dtype`` (bf16 by default: no fp32 copy, no gradients, no optimizer state), the adapters
stay fp32. Both are sharded by FSDP2 like any parameter.

Files: ``save_lora`` writes diffusers' format (``pytorch_lora_weights.safetensors``, keys
``transformer.<module>.lora_A.weight``) via ``MochiPipeline.save_lora_weights``, with adapter
metadata ``r = lora_alpha = rank`` (FastVideo's convention) and ``fastvideo_lora.json`` holding the
training rank and alpha. Load it as::

    pipe.load_lora_weights(dir, adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", alpha / rank)

``fuse`` folds a LoRA into the base weights and saves a full diffusers transformer.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from fastvideo.io import atomic_dir

LORA_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "fastvideo_lora.json"
ADAPTER = "default"
DEFAULT_TARGETS = "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out"


def target_regex(spec: str) -> str:
    """``re:<regex>`` as given, or comma-separated module names within the transformer blocks."""
    if spec.startswith("re:"):
        return spec[3:]
    names = [re.escape(n.strip()) for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--lora_target_modules names no module")
    return rf".*transformer_blocks\.\d+\..*\.({'|'.join(names)})"


def add_lora(
    model: torch.nn.Module, *, rank: int, alpha: float, targets: str, base_dtype: torch.dtype
) -> None:
    from peft import LoraConfig

    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_regex(targets)), ADAPTER)
    trainable = 0
    for name, param in model.named_parameters():
        is_lora = ".lora_" in name
        param.requires_grad_(is_lora)
        trainable += is_lora
        if not is_lora and param.dtype != base_dtype:
            param.data = param.data.to(base_dtype)
    if not trainable:
        raise ValueError(f"--lora_target_modules {targets!r} matched no module of the transformer blocks")


def with_lora_init(
    base: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """The full state dict of a LoRA model: base weights under peft's names plus fresh adapters.

    Adapters are initialised like peft does (A: nn.Linear's Kaiming-uniform, B: zeros, so training
    starts from the base model), from ``seed`` so every run and every layout starts identically.
    ``targets`` maps the LoRA model's state-dict names to its tensors (only their shapes are used).
    """
    g = torch.Generator().manual_seed(seed)
    full = {}
    for name, param in targets.items():
        if ".lora_" not in name:
            full[name] = base[name.replace(".base_layer", "")]
        elif ".lora_A." in name:
            fan_in = param.shape[1]
            bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) on a Linear weight
            full[name] = (torch.rand(param.shape, generator=g) * 2 - 1) * bound
        else:
            full[name] = torch.zeros(param.shape)
    return full


def lora_weights(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter weights of a full state dict, under diffusers' names (adapter name dropped)."""
    return {k.replace(f".{ADAPTER}.", "."): v for k, v in full.items() if ".lora_" in k}


def save_lora(out: Path, weights: dict[str, torch.Tensor], *, rank: int, alpha: float, targets: str) -> Path:
    from diffusers import MochiPipeline

    with atomic_dir(out) as staging:
        MochiPipeline.save_lora_weights(
            staging,
            transformer_lora_layers={k: v.contiguous() for k, v in weights.items()},
            transformer_lora_adapter_metadata={
                "r": rank,
                "lora_alpha": rank,
                "target_modules": target_regex(targets),
            },
            weight_name=LORA_FILE,
        )
        info = {"rank": rank, "alpha": alpha, "scale": alpha / rank, "target_modules": targets}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    path = Path(path)
    file = path / LORA_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no LoRA file at {file}")
    info_file = file.parent / INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return load_file(file), info


def check_lora_matches(
    weights: dict[str, torch.Tensor], model: torch.nn.Module, rank: int | None = None
) -> None:
    """Refuse a LoRA made for another model (unknown modules, wrong shapes) or of another rank."""
    modules = dict(model.named_modules())
    problems = []
    for key, tensor in weights.items():
        module_name, kind = re.sub(r"^transformer\.", "", key).split(".lora_")
        module = modules.get(module_name)
        if not isinstance(module, torch.nn.Linear) and not hasattr(module, "base_layer"):
            problems.append(f"{key}: the model has no linear layer {module_name!r}")
            continue
        base = getattr(module, "base_layer", module)
        r = tensor.shape[0] if kind.startswith("A") else tensor.shape[1]
        expected = (r, base.in_features) if kind.startswith("A") else (base.out_features, r)
        if tuple(tensor.shape) != expected:
            problems.append(f"{key}: shape {tuple(tensor.shape)}, the model needs {expected}")
        elif rank is not None and r != rank:
            problems.append(f"{key}: rank {r}, expected {rank}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"this LoRA does not fit the model: {shown}")


def fuse(model_path: Path, lora_path: Path, output: Path, scale: float | None = None) -> Path:
    """Fold a LoRA into the base transformer and save a full diffusers transformer."""
    from diffusers import MochiTransformer3DModel

    transformer = MochiTransformer3DModel.from_pretrained(Path(model_path) / "transformer")
    weights, info = read_lora(lora_path)
    check_lora_matches(weights, transformer)
    scale = scale if scale is not None else info.get("scale", 1.0)
    transformer.load_lora_adapter(weights, prefix="transformer", adapter_name="fastvideo")
    transformer.fuse_lora(lora_scale=scale)
    transformer.unload_lora()
    with atomic_dir(output) as staging:
        transformer.save_pretrained(staging, safe_serialization=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuse", help="fold a LoRA into the base and save a full diffusers transformer")
    f.add_argument(
        "--model_path", required=True, help="diffusers pipeline directory (its transformer/ is the base)"
    )
    f.add_argument(
        "--lora_path", required=True, help="folder with pytorch_lora_weights.safetensors, or the file"
    )
    f.add_argument("--output", required=True, help="folder for the fused transformer")
    f.add_argument("--scale", type=float, default=None, help="default: alpha / rank from fastvideo_lora.json")
    args = parser.parse_args(argv)
    try:
        out = fuse(Path(args.model_path), Path(args.lora_path), Path(args.output), args.scale)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fused transformer written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
