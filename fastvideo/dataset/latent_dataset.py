"""Read preprocessed latents and text embeddings, and batch them by shape for data-parallel training.

    dataset = LatentDataset("data/processed")            # the folder holding videos2caption.json
    sampler = ShapeBucketSampler(dataset, batch_size=2, dp_rank=r, dp_size=n, accumulation=1, seed=0)
    batches = iter(sampler)                               # infinite: one epoch after another
    batch = collate([dataset[i] for i in next(batches)])  # latents [B, C, T, h, w], ...
    saved = sampler.state_dict()                          # later: sampler.load_state_dict(saved)

The folder is what ``fastvideo.data_preprocess.preprocess`` (``bash scripts/finetune_data_gen.sh``)
writes, in the layout of :mod:`fastvideo.dataset.layout`. An item is ``{"latents": [C, T, h, w],
"cond": {name: tensor}, "caption", "index"}``: ``cond`` is the family's conditioning record
(Mochi: ``prompt_embeds`` [L, D] and ``prompt_attention_mask`` [L] bool; Wan: ``prompt_embeds``),
batched by ``collate`` into ``{name: [B, ...]}`` and handed to the model untouched.

``ShapeBucketSampler`` guarantees, for one data-parallel rank:

* an optimizer step takes one *global batch* of ``batch_size x dp_size x accumulation`` items of one
  latent shape (bucket key: kind, length, height, width from the index), so images and videos, or
  videos of different sizes, never meet in a step;
* each epoch is shuffled by a generator seeded with (seed, epoch), and the order of global batches
  depends on the global batch size alone: any layout with the same global batch (2 ranks x 1, or 1
  rank x 2, or 1 rank x 1 x 2 micro-steps) trains on the same items at every step;
* a global batch is cut into micro-batches: micro-step m of data-parallel rank r holds the items at
  *positions* ``(m * dp_size + r) * batch_size + j``, and ``micro_batches()`` yields those positions
  with the indices (the trainer keys each sample's noise on its position, so noise does not depend
  on the layout either); ranks of one sequence-parallel group pass the same ``dp_rank``;
* items that do not fill a whole global batch are left out of that epoch (a different few each
  epoch);
* ``state_dict()`` records the position in global samples (epoch, samples consumed in it), so a
  resumed run, on the same or another layout with the same global batch, continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch

from fastvideo.dataset.layout import (
    INDEX_FILE,
    LATENTS,
    Field,
    file_of,
    load_null_condition,
    record_fields,
)

MAKE_DATA = "run `bash scripts/finetune_data_gen.sh` to preprocess your videos into it"


class BucketKey(NamedTuple):
    """What decides a latent's shape: items with equal keys can share a batch."""

    kind: str
    length: int | None
    height: int | None
    width: int | None


# --- the dataset ---------------------------------------------------------------------------------
def resolve_index(data_dir: str | Path) -> Path:
    """The index file for a dataset folder (or the index file itself), with a clear error if absent."""
    path = Path(data_dir)
    if path.is_file():
        return path
    if not path.exists():
        raise ValueError(f"preprocessed data folder {path} does not exist; {MAKE_DATA}")
    index = path / INDEX_FILE
    if not index.is_file():
        raise ValueError(f"{path} has no {INDEX_FILE} (not a preprocessed data folder); {MAKE_DATA}")
    return index


def read_index(index: Path) -> list[dict]:
    try:
        records = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{index} is not a readable index ({err}); {MAKE_DATA}") from None
    if not isinstance(records, list):
        raise ValueError(f"{index} should hold a list of items; {MAKE_DATA}")
    if not records:
        raise ValueError(
            f"{index} lists no items (see preprocess_report.json beside it for skipped ones); {MAKE_DATA}"
        )
    # Every item lists latents, a prompt embedding, and whatever else the first item lists.
    listed = [f.key for f in record_fields(records[0])] if isinstance(records[0], dict) else []
    expected = list(dict.fromkeys([LATENTS.key, "prompt_embed_path", *listed]))
    for i, rec in enumerate(records):
        missing = [k for k in expected if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ValueError(f"{index}: item {i} lacks {missing}; {MAKE_DATA}")
    return records


def bucket_key(record: dict) -> BucketKey:
    # Indexes written by older tools may lack "kind": those hold videos only.
    return BucketKey(
        kind=record.get("kind", "video"),
        length=record.get("length"),
        height=record.get("height"),
        width=record.get("width"),
    )


class LatentDataset(torch.utils.data.Dataset):
    """Items of a preprocessed folder: ``dataset[i]`` loads one sample from disk.

    ``data_dir`` is the folder holding ``videos2caption.json`` (or that file). Every listed file is
    checked to exist up front, so a broken folder fails before any model is loaded.
    """

    def __init__(self, data_dir: str | Path):
        self.index_path = resolve_index(data_dir)
        self.root = self.index_path.parent
        self.records = read_index(self.index_path)
        self.fields: list[Field] = record_fields(self.records[0])
        self._check_files()
        self.null_condition = load_null_condition(self.root)
        """The encoded empty prompt (unconditional input) when preprocessing stored it, else None."""

    @property
    def condition_keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f is not LATENTS)

    def _files(self, i: int) -> dict[str, Path]:
        return {f.name: file_of(self.root, f, self.records[i]) for f in self.fields}

    def _check_files(self) -> None:
        missing = [p for i in range(len(self)) for p in self._files(i).values() if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(
                f"{missing[0]}{more} listed in {self.index_path} is missing; re-run "
                "`bash scripts/finetune_data_gen.sh` with the same settings (finished items are reused)"
            )

    def __len__(self) -> int:
        return len(self.records)

    def bucket_key(self, i: int) -> BucketKey:
        return bucket_key(self.records[i])

    def bucket_keys(self) -> list[BucketKey]:
        """One key per item, read from the index (no tensor is loaded)."""
        return [bucket_key(rec) for rec in self.records]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        i = i % len(self)
        tensors = {name: _load(path, self.index_path) for name, path in self._files(i).items()}
        tensors = {k: v.bool() if v.dtype == torch.bool else v.float() for k, v in tensors.items()}
        return {
            "latents": tensors.pop(LATENTS.name),
            "cond": tensors,
            "caption": self.records[i].get("caption", ""),
            "index": i,
        }


def _load(path: Path, index: Path) -> torch.Tensor:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        # Checked at construction, so the folder changed under a running job.
        raise ValueError(
            f"{path} listed in {index} is missing; re-run `bash scripts/finetune_data_gen.sh`"
        ) from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path} listed in {index} is unreadable ({type(err).__name__}: {first_sentence(err)}); "
            "delete it and re-run `bash scripts/finetune_data_gen.sh` with the same settings to redo that item"
        ) from None


def first_sentence(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].split(". ")[0] if lines else ""


def collate(items: Sequence[dict]) -> dict:
    """Stack items of one shape into a batch: tensors gain a leading batch dim, captions form a list."""
    if not items:
        raise ValueError("collate got an empty batch")
    batch = {"latents": _stack("latents", [it["latents"] for it in items])}
    batch["cond"] = {k: _stack(k, [it["cond"][k] for it in items]) for k in items[0]["cond"]}
    batch["caption"] = [it["caption"] for it in items]
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


def _stack(key: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch {key} of different shapes {shapes}; sample with ShapeBucketSampler so a "
            "batch holds one shape"
        )
    return torch.stack(tensors)


# --- the sampler ---------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than seed + epoch, so runs with nearby seeds do not share epochs.
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def group_buckets(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Indices per key, buckets in a fixed order (by repr, which works for any key)."""
    buckets: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        buckets.setdefault(key, []).append(i)
    return {key: buckets[key] for key in sorted(buckets, key=repr)}


class ShapeBucketSampler:
    """Infinite, resumable stream of same-shape micro-batches (lists of indices) for one data-parallel rank.

    ``source`` is a ``LatentDataset`` (its ``bucket_keys()`` are used) or a sequence of one hashable
    bucket key per item. Use one iterator at a time: iterating advances the position that
    ``state_dict()`` reports.
    """

    def __init__(
        self,
        source: LatentDataset | Sequence[Hashable],
        *,
        batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        accumulation: int = 1,
        seed: int = 0,
    ):
        if batch_size < 1 or dp_size < 1 or accumulation < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(
                f"need batch_size >= 1, dp_size >= 1, accumulation >= 1 and 0 <= dp_rank < dp_size "
                f"(got batch_size={batch_size}, dp_rank={dp_rank}, dp_size={dp_size}, accumulation={accumulation})"
            )
        keys = source.bucket_keys() if hasattr(source, "bucket_keys") else list(source)
        self.batch_size, self.dp_rank, self.dp_size, self.seed = batch_size, dp_rank, dp_size, seed
        self.accumulation = accumulation
        self.num_items = len(keys)
        self.buckets = group_buckets(keys)
        self.steps_per_epoch = sum(len(idx) // self.global_batch for idx in self.buckets.values())
        self._check_buckets()
        self.epoch, self.batch = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    @property
    def global_batch(self) -> int:
        """Items per optimizer step over every rank and micro-step."""
        return self.batch_size * self.dp_size * self.accumulation

    def _check_buckets(self) -> None:
        small = {key: len(idx) for key, idx in self.buckets.items() if len(idx) < self.global_batch}
        if not small:
            return
        sizes = "; ".join(f"{key}: {n} items" for key, n in small.items())
        need = (
            f"{self.global_batch} items (batch_size {self.batch_size} x dp_size {self.dp_size} x "
            f"accumulation {self.accumulation})"
        )
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"no batch can be formed: a batch needs {need} of one shape, but {sizes}. Lower "
                "--train_batch_size or --gradient_accumulation_steps, use fewer data-parallel ranks, or "
                "preprocess more items"
            )
        warnings.warn(f"shape buckets smaller than {need} are never sampled: {sizes}", stacklevel=2)

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank (the same on every rank)."""
        return self.steps_per_epoch * self.accumulation

    def first_position(self, batch: int) -> int:
        """Global position (within its step) of the first item of this rank's micro-batch number ``batch``."""
        return (batch % self.accumulation * self.dp_size + self.dp_rank) * self.batch_size

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``, in order: a pure function of (seed, global batch, epoch)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        global_batches = []
        for idx in self.buckets.values():
            perm = torch.randperm(len(idx), generator=g).tolist()
            usable = len(idx) // self.global_batch * self.global_batch
            shuffled = [idx[p] for p in perm[:usable]]
            global_batches += [
                shuffled[s : s + self.global_batch] for s in range(0, usable, self.global_batch)
            ]
        # Interleave buckets; every rank draws the same order, so all hold one shape at each step.
        order = torch.randperm(len(global_batches), generator=g).tolist()
        return [global_batches[o] for o in order]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of ``epoch``, in order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        batches = []
        for items in self.global_batches(epoch):
            for micro in range(self.accumulation):
                lo = self.first_position(micro)
                batches.append(items[lo : lo + self.batch_size])
        self._cached = (epoch, batches)
        return batches

    def micro_batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """(indices, global positions within the step) of each micro-batch, from the current position."""
        while True:
            batches = self.epoch_batches(self.epoch)
            batch, first = batches[self.batch], self.first_position(self.batch)
            # Advance before yielding: state_dict() taken after k batches resumes at batch k.
            self.batch += 1
            if self.batch == len(batches):
                self.epoch, self.batch = self.epoch + 1, 0
            yield batch, list(range(first, first + len(batch)))

    def __iter__(self) -> Iterator[list[int]]:
        return (indices for indices, _ in self.micro_batches())

    def samples_consumed(self) -> int:
        """Items of the current epoch already handed out by the whole job (all ranks)."""
        step, micro = divmod(self.batch, self.accumulation)
        return step * self.global_batch + micro * self.dp_size * self.batch_size

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "samples": self.samples_consumed(),
            "seed": self.seed,
            "global_batch": self.global_batch,
            "num_items": self.num_items,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; refuses a state saved with other settings or data.

        The layout may differ (data-parallel size, batch size, accumulation) as long as the global
        batch is the same and the position falls on one of this layout's micro-batches.
        """
        mine = self.state_dict()
        changed = [
            f"{k.replace('_', ' ')} {state.get(k)} -> {mine[k]}"
            for k in ("seed", "global_batch", "num_items", "steps_per_epoch")
            if state.get(k) != mine[k]
        ]
        if changed:
            raise ValueError(
                f"the data position was saved with other settings or data ({'; '.join(changed)}); resume with "
                "the same seed and dataset, and the same global batch (batch size x data-parallel ranks x "
                "accumulation)"
            )
        epoch, samples = int(state["epoch"]), int(state["samples"])
        per_micro = self.dp_size * self.batch_size
        step, rest = divmod(samples, self.global_batch)
        if epoch < 0 or not 0 <= step < self.steps_per_epoch or rest % per_micro:
            raise ValueError(f"invalid data position: epoch {epoch}, sample {samples}")
        self.epoch, self.batch = epoch, step * self.accumulation + rest // per_micro


class BatchPrefetcher:
    """Loads the next micro-batch in a background thread while the current step computes.

    Each batch also holds ``position``: the items' global positions within their optimizer step.
    ``state_dict()`` is the sampler position after the batches handed out so far (not counting
    the one being prefetched), so a checkpoint resumes with exactly the next unconsumed batch.
    """

    def __init__(self, sampler: ShapeBucketSampler, dataset: LatentDataset):
        self.sampler, self.dataset = sampler, dataset
        self._batches = sampler.micro_batches()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: Future | None = None
        self._resume_state = sampler.state_dict()

    def _load(self, micro_batch: tuple[list[int], list[int]]) -> dict:
        indices, positions = micro_batch
        batch = collate([self.dataset[i] for i in indices])
        batch["position"] = torch.tensor(positions, dtype=torch.long)
        return batch

    def next(self) -> dict:
        if self._pending is None:
            self._pending = self._pool.submit(self._load, next(self._batches))
        batch = self._pending.result()
        self._resume_state = self.sampler.state_dict()
        self._pending = self._pool.submit(self._load, next(self._batches))
        return batch

    def state_dict(self) -> dict:
        return dict(self._resume_state)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
