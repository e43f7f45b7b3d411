"""Moving whole weights in and out of a sharded DiT.

``load_transformer_weights`` reads a diffusers ``transformer/`` folder (one safetensors file or a
sharded index) on rank 0 and hands every rank its shards (``broadcast_from_rank0``), so only one
full copy is ever in memory. ``export_transformer`` gathers the full weights to rank 0 and writes a
diffusers folder (``config.json`` + safetensors via ``save_pretrained``) that
the family's transformer class and pipeline load; it is written to a temporary folder and
renamed when whole. ``write_pipeline_folder`` then makes the output folder a
whole diffusers pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from fastvideo.io import atomic_dir, atomic_write_json
from fastvideo.parallel.process_group import DistInfo


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in folder.glob("*.safetensors")]
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def load_transformer_weights(model: torch.nn.Module, folder: Path, dist_info: DistInfo, prepare=None) -> None:
    """Load ``folder``'s weights into the (possibly sharded) ``model``, each cast to its parameter's dtype.

    ``prepare(full, targets)`` may rename or add entries first (e.g. fresh LoRA adapters); ``targets``
    maps each of the model's state-dict names to its (sharded or meta) tensor.
    """
    distributed = dist_info.world_size > 1
    full = {}
    if dist_info.is_main or not distributed:
        targets = get_model_state_dict(model)
        full = read_safetensors_folder(folder)
        if prepare is not None:
            full = prepare(full, targets)
        full = {k: v.to(targets[k].dtype) for k, v in full.items()}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=True)
    set_model_state_dict(model, full, options=options)


def gather_full_state(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0 (CPU), empty elsewhere; ``trainable_only`` skips frozen ones."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def export_transformer(model: torch.nn.Module, adapter, out: Path, dist_info: DistInfo) -> Path:
    state = gather_full_state(model)
    if dist_info.is_main:
        with torch.device("meta"):
            clean = adapter.transformer_class().from_config(adapter.transformer_config())
        clean.load_state_dict(state, assign=True)
        with atomic_dir(out) as staging:
            clean.save_pretrained(staging, safe_serialization=True)
    dist_info.barrier()
    return out


def pipeline_components(index: dict) -> list[str]:
    """The components a ``model_index.json`` lists as present (``[library, class]``, not ``[null, null]``)."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]


def write_pipeline_folder(
    out: Path, base: Path, scheduler=None, trained: str = "transformer", keep: tuple[str, ...] = ()
) -> list[str]:
    """Make ``out`` (holding the exported ``trained`` folder) a pipeline folder that ``from_pretrained`` loads.

    Writes ``model_index.json`` and links (absolute symbolic links; ``cp -rL`` makes a standalone
    copy) each component of ``base`` (what its ``model_index.json`` lists: ``vae``,
    ``text_encoder``, ``tokenizer``, ``transformer``, and ``text_encoder_2``, ``transformer_2`` ...
    where the family has them) that ``out`` lacks, except ``scheduler`` when one is given (saved
    instead) and the ``trained`` folder itself (``transformer``, ``transformer_2``, or a LoRA run's
    ``lora``, whose base DiT is then linked; ``""`` links every component). Folders named in
    ``keep`` (the LoRA of an expert the run left unchanged) are linked too where ``base`` has them.
    Returns what is missing (nothing when the folder is whole); existing real folders are kept.
    """
    index_path = base / "model_index.json"
    if not index_path.is_file():
        return [f"{index_path} (the base is not a diffusers pipeline folder)"]
    index = json.loads(index_path.read_text())
    names = [c for c in pipeline_components(index) if c != trained]
    if scheduler is not None:
        names = [n for n in names if n != "scheduler"]
        index["scheduler"] = [type(scheduler).__module__, type(scheduler).__name__]
        with atomic_dir(out / "scheduler") as staging:
            scheduler.save_pretrained(staging)
    optional = [k for k in keep if k != trained and (base / k).is_dir()]
    missing = []
    for name in names + optional:
        link, target = out / name, base / name
        if link.exists() and not link.is_symlink():
            continue
        if not target.is_dir():
            missing.append(str(target))
            continue
        if link.is_symlink():
            link.unlink()
        os.symlink(target.resolve(), link, target_is_directory=True)
    atomic_write_json(index, out / "model_index.json")
    return missing
