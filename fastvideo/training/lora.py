"""LoRA on a plain diffusers DiT through peft (diffusers' adapter API), and its files.

    python -m fastvideo.training.lora fuse --model_type mochi --model_path data/tiny-mochi \
        --lora_path outputs/lora-mochi/lora --output outputs/fused-transformer

Training: ``add_lora`` injects rank-``r`` adapters into the named modules inside the family's
repeated blocks (by default ``adapter.lora_targets``: Mochi's video and text attention
projections, Wan's self- and cross-attention ones) and freezes everything else; the frozen base is cast
to ``base_dtype`` (bf16 by default: no fp32 copy, no gradients, no optimizer state), the adapters
stay fp32. Both are sharded by FSDP2 like any parameter.

Files: ``save_lora`` writes diffusers' format (``pytorch_lora_weights.safetensors``, keys
``transformer.<module>.lora_A.weight``) via the family pipeline's ``save_lora_weights``
(``MochiPipeline``, ``WanPipeline``), with adapter
metadata ``r = lora_alpha = rank`` (FastVideo's convention) and ``fastvideo_lora.json`` holding the
training rank and alpha. Load it as::

    pipe.load_lora_weights(dir, adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", alpha / rank)

``fuse`` folds a LoRA into the base weights and saves a full diffusers transformer. ``comfyui``
(and ``--lora_comfyui`` at training) also writes ``comfyui_lora.safetensors``: the same adapters
under the original checkpoint's module names, as ComfyUI loads them
(``diffusion_model.<module>.lora_down.weight``, ``lora_up.weight`` and ``alpha``, so the file
carries its own scale; Mochi's fused qkv projections get one block-diagonal adapter each)::

    python -m fastvideo.training.lora comfyui --model_type wan --lora_path outputs/lora-wan/lora
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
COMFYUI_FILE = "comfyui_lora.safetensors"
INFO_FILE = "fastvideo_lora.json"
ADAPTER = "default"


def target_regex(spec: str, block_lists: tuple[str, ...] = ("transformer_blocks",)) -> str:
    """``re:<regex>`` as given, or comma-separated module names within the blocks of ``block_lists``."""
    if spec.startswith("re:"):
        return spec[3:]
    names = [re.escape(n.strip()) for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--lora_target_modules names no module")
    lists = "|".join(re.escape(b) for b in block_lists)
    return rf"(.*\.)?({lists})\.\d+\..*\.({'|'.join(names)})"


def add_lora(
    model: torch.nn.Module,
    *,
    rank: int,
    alpha: float,
    targets: str,
    base_dtype: torch.dtype,
    block_lists: tuple[str, ...] = ("transformer_blocks",),
) -> None:
    from peft import LoraConfig

    regex = target_regex(targets, block_lists)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=regex), ADAPTER)
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


def save_lora(
    out: Path, weights: dict[str, torch.Tensor], *, rank: int, alpha: float, targets: str, adapter
) -> Path:
    """Write ``weights`` in diffusers' format through the family pipeline's ``save_lora_weights``."""
    with atomic_dir(out) as staging:
        adapter.pipeline_class().save_lora_weights(
            staging,
            transformer_lora_layers={k: v.contiguous() for k, v in weights.items()},
            transformer_lora_adapter_metadata={
                "r": rank,
                "lora_alpha": rank,
                "target_modules": target_regex(targets, adapter.block_lists),
            },
            weight_name=LORA_FILE,
        )
        info = {"rank": rank, "alpha": alpha, "scale": alpha / rank, "target_modules": targets}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def comfyui_weights(weights: dict[str, torch.Tensor], alpha: float, adapter) -> dict[str, torch.Tensor]:
    """``weights`` (diffusers' names) under ComfyUI's: ``diffusion_model.<original module>.lora_down``/
    ``lora_up`` plus an ``alpha`` per module, so loaders apply fastvideo's ``alpha / rank``.

    Adapters of projections the original checkpoint fuses into one module (``adapter.comfyui_target``:
    Mochi's qkv) become one adapter of that module: the downs stacked, the ups block-diagonal (a part
    without an adapter keeps zero rows), so its delta is each part's delta in its own rows; its rank is
    the sum of theirs, so its alpha grows with it and the scale stays ``alpha / rank``.
    """
    modules: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    counts: dict[str, int] = {}
    for key, tensor in weights.items():
        module, kind = re.sub(r"^transformer\.", "", key).split(".lora_")
        target, part, parts = adapter.comfyui_target(module)
        modules.setdefault(target, {}).setdefault(part, {})["down" if kind.startswith("A") else "up"] = tensor
        counts[target] = parts
    out = {}
    for target, found in modules.items():
        name, order = f"diffusion_model.{target}", sorted(found)
        rank = found[order[0]]["down"].shape[0]
        rows = found[order[0]]["up"].shape[0]
        up = torch.zeros(rows * counts[target], rank * len(order), dtype=found[order[0]]["up"].dtype)
        for column, part in enumerate(order):
            up[part * rows : (part + 1) * rows, column * rank : (column + 1) * rank] = found[part]["up"]
        out[f"{name}.lora_down.weight"] = torch.cat([found[p]["down"] for p in order]).contiguous()
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(float(alpha) * len(order))
    return out


def write_comfyui(lora_dir: Path, adapter) -> Path:
    """Write ``comfyui_lora.safetensors`` beside a diffusers-format LoRA folder (atomically)."""
    from safetensors.torch import save_file

    weights, info = read_lora(lora_dir)
    if "alpha" not in info:
        raise ValueError(f"{lora_dir} has no {INFO_FILE} (its alpha is needed for ComfyUI's scale)")
    path = Path(lora_dir) / COMFYUI_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(comfyui_weights(weights, info["alpha"], adapter), tmp)
    tmp.replace(path)
    return path


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


def fuse(
    model_path: Path, lora_path: Path, output: Path, scale: float | None = None, model_type: str = "mochi"
) -> Path:
    """Fold a LoRA into the base transformer and save a full diffusers transformer."""
    from fastvideo.models import get_adapter_class

    adapter = get_adapter_class(model_type)(model_path)
    transformer = adapter.transformer_class().from_pretrained(Path(model_path) / "transformer")
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
    f.add_argument("--model_type", default="mochi", help="the model family (mochi, wan, cogvideox, hunyuan)")
    f.add_argument(
        "--model_path", required=True, help="diffusers pipeline directory (its transformer/ is the base)"
    )
    f.add_argument(
        "--lora_path", required=True, help="folder with pytorch_lora_weights.safetensors, or the file"
    )
    f.add_argument("--output", required=True, help="folder for the fused transformer")
    f.add_argument("--scale", type=float, default=None, help="default: alpha / rank from fastvideo_lora.json")
    c = sub.add_parser(
        "comfyui", help="also write the LoRA under ComfyUI's key names (comfyui_lora.safetensors)"
    )
    c.add_argument("--model_type", default="mochi", help="the model family (wan)")
    c.add_argument(
        "--lora_path", required=True, help="a fastvideo LoRA folder (pytorch_lora_weights.safetensors)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "comfyui":
            from fastvideo.models import get_adapter_class

            adapter = get_adapter_class(args.model_type)(Path(args.lora_path))
            print(f"ComfyUI LoRA written to {write_comfyui(Path(args.lora_path), adapter)}")
            return 0
        out = fuse(
            Path(args.model_path), Path(args.lora_path), Path(args.output), args.scale, args.model_type
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fused transformer written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
