"""The on-disk layout of a preprocessed dataset, defined once (FastVideo's layout, extended by name).

    DATA_DIR/
      videos2caption.json           # the index: one record per item
      latent/<name>.pt              # [C, T, h, w] normalised latents
      prompt_embed/<name>.pt        # [L, D]   } the conditioning record, one folder per tensor:
      prompt_attention_mask/<name>.pt  # [L] bool  } which ones depends on the family
      ...                           # (pooled_prompt_embed/, image_latent/, image_embed/)
      null_condition.pt             # {name: tensor}: the encoded empty prompt (unconditional input)
      validation/                   # the same layout for validation prompts (no latents)
      preprocess_config.json, preprocess_report.json

A record names each file by its index key (``{"latent_path": "x.pt", "prompt_embed_path": "x.pt",
...}``, the keys FastVideo's ``videos2caption.json`` uses) plus ``caption``, ``kind``, ``length``,
``height``, ``width``. Preprocessing writes it, ``LatentDataset`` and validation read it, through
the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

INDEX_FILE = "videos2caption.json"
NULL_CONDITION_FILE = "null_condition.pt"
VALIDATION_DIR = "validation"


@dataclass(frozen=True)
class Field:
    """One stored tensor: its name in a batch, its folder and its key in an index record."""

    name: str
    folder: str
    key: str


LATENTS = Field("latents", "latent", "latent_path")
CONDITION_FIELDS = {
    f.name: f
    for f in (
        Field("prompt_embeds", "prompt_embed", "prompt_embed_path"),
        Field("prompt_attention_mask", "prompt_attention_mask", "prompt_attention_mask"),
        Field("pooled_prompt_embeds", "pooled_prompt_embed", "pooled_prompt_embed_path"),
        Field("image_latents", "image_latent", "image_latent_path"),
        Field("image_embeds", "image_embed", "image_embed_path"),
    )
}
FIELDS = {LATENTS.name: LATENTS, **CONDITION_FIELDS}


def condition_fields(names: tuple[str, ...] | list[str]) -> list[Field]:
    """The fields of a family's conditioning record (``adapter.condition_keys``)."""
    unknown = [n for n in names if n not in CONDITION_FIELDS]
    if unknown:
        raise ValueError(
            f"no on-disk layout for condition tensors {unknown}; known: {', '.join(CONDITION_FIELDS)}"
        )
    return [CONDITION_FIELDS[n] for n in names]


def record_fields(record: dict) -> list[Field]:
    """The stored tensors a record lists (latents first, then its conditioning in layout order)."""
    return [f for f in FIELDS.values() if f.key in record]


def file_of(root: Path, field: Field, record: dict) -> Path:
    return Path(root) / field.folder / record[field.key]


def item_file(root: Path, field: Field, name: str) -> Path:
    """Where preprocessing writes item ``name``'s tensor of ``field``."""
    return Path(root) / field.folder / f"{name}.pt"


def record_for(name: str, fields: list[Field]) -> dict:
    """The index entries naming item ``name``'s files."""
    return {f.key: f"{name}.pt" for f in fields}


def load_condition(root: Path, record: dict) -> dict[str, torch.Tensor]:
    """The conditioning tensors a record lists, as stored (masks bool, embeddings float32)."""
    out = {}
    for field in record_fields(record):
        if field is LATENTS:
            continue
        tensor = torch.load(file_of(root, field, record), map_location="cpu", weights_only=True)
        out[field.name] = tensor.bool() if tensor.dtype == torch.bool else tensor.float()
    return out


def load_null_condition(root: Path) -> dict[str, torch.Tensor] | None:
    """The encoded empty prompt stored beside the index (None for folders made before it existed)."""
    path = Path(root) / NULL_CONDITION_FILE
    if not path.is_file():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.bool() if v.dtype == torch.bool else v.float() for k, v in stored.items()}
