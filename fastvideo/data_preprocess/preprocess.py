r"""Turn videos and captions into latents and text embeddings, once, across all ranks.

    torchrun --nproc_per_node 2 -m fastvideo.data_preprocess.preprocess \
        --model_path data/tiny-mochi --data_dir data/synthetic/mochi --output_dir data/processed \
        --num_frames 25 --height 64 --width 96 --train_fps 30

(or ``bash scripts/finetune_data_gen.sh``; plain ``python -m ...`` runs as one process).

Two passes so a rank never holds the VAE and the text encoder at once: a VAE pass writing
``latent/<name>.pt`` ([C, T, h, w]) and a text pass writing the family's conditioning record, one
folder per tensor (Mochi: ``prompt_embed/<name>.pt`` [L, D] and ``prompt_attention_mask/<name>.pt``
[L] bool; Wan: ``prompt_embed/`` only; HunyuanVideo image-to-video encodes each caption with its clip's
first frame), plus ``null_condition.pt``, the encoded empty prompt. Each
rank takes every world_size-th item. Rank 0 then writes ``videos2caption.json`` (FastVideo's
layout, :mod:`fastvideo.dataset.layout`), ``validation/`` records for the validation prompts, and
``preprocess_report.json`` listing every skipped item with its reason.

Every file is written atomically, finished items are skipped on a re-run (so a killed run resumes),
and a re-run with different settings into the same OUTPUT_DIR is refused instead of mixing
incompatible latents.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastvideo.cli import launch, parse_config
from fastvideo.data_preprocess.sources import Item, collect_items
from fastvideo.dataset.layout import (
    INDEX_FILE,
    LATENTS,
    NULL_CONDITION_FILE,
    VALIDATION_DIR,
    condition_fields,
    item_file,
    record_for,
)
from fastvideo.io import atomic_torch_save, atomic_write_json, remove_stale_tmp_files
from fastvideo.lock import check_free, lock_on_main
from fastvideo.media.video import FrameSpec, MediaError, load_media, write_video
from fastvideo.models import MODEL_TYPES, ModelAdapter, get_adapter_class
from fastvideo.models.base import component_fingerprint
from fastvideo.parallel.process_group import DistInfo

CONFIG_FILE = "preprocess_config.json"
REPORT_FILE = "preprocess_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Settings that change what is written: a re-run must match them to reuse finished files.
OUTPUT_DEFINING = (
    "model_type", "model_path", "num_frames", "height", "width", "train_fps", "skip_frames_start",
    "skip_frames_end", "frame_window", "crop", "seed", "latent_dtype", "embed_dtype", "id_token",
)  # fmt: skip


@dataclass
class PreprocessConfig:
    """Everything the preprocessing run needs; parsed from the command line in ``parse_args``."""

    output_dir: str
    """Where latent/, the conditioning folders (prompt_embed/, ...), validation/ and the index go."""
    model_path: str = "data/tiny-mochi"
    """Local diffusers-layout model directory (the embedded tiny model by default)."""
    model_type: str = "mochi"
    """Model family; decides the adapter and its frame/size rules."""
    data_merge_path: str | None = None
    """FastVideo merge file (media_folder,json_path lines) or a CSV/JSONL table."""
    data_dir: str | None = None
    """A Mochi-style folder, a CogVideoX-style root or a folder with one CSV/JSONL (auto-detected)."""
    caption_column: str = "caption"
    """Caption column of a CSV/JSONL table."""
    video_column: str = "video"
    """Media-path column of a CSV/JSONL table."""
    num_frames: int = 25
    """Frames per sample, after resampling to train_fps (Mochi: 6k+1)."""
    height: int = 64
    width: int = 96
    train_fps: float = 30.0
    """Videos are resampled to this frame rate before frames are taken."""
    skip_frames_start: int = 0
    skip_frames_end: int = 0
    frame_window: str = "start"
    """start: the first num_frames; center: a window centred in the clip."""
    crop: str = "center"
    """center | random | none (none resizes without keeping the aspect ratio)."""
    seed: int = 0
    """Seeds the random crop, per item, so a re-run crops identically."""
    validation_prompt_txt: str | None = None
    """One prompt per line; their embeddings go to OUTPUT_DIR/validation/."""
    validation_prompts: str = ""
    """More validation prompts in one string, split by validation_prompt_separator (CogVideoX-recipe style)."""
    validation_prompt_separator: str = ":::"
    id_token: str = ""
    """Trigger word prepended to every caption and validation prompt before encoding (LoRA recipes)."""
    verify: int = 0
    """Decode this many latents back to mp4 (input | reconstruction) under OUTPUT_DIR/verify/."""
    strict: bool = False
    """Exit non-zero if any item was skipped (default: only when none succeeded)."""
    overwrite: bool = False
    """Discard an OUTPUT_DIR made with other settings instead of refusing to run."""
    dtype: str = "auto"
    """Model compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32 or bfloat16."""
    latent_dtype: str = "float32"
    embed_dtype: str = "bfloat16"
    text_batch_size: int = 8
    vae_tiling: bool = True
    """Encode large frames in tiles (diffusers' VAE tiling) to bound memory."""

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"--model_type {self.model_type!r} is not supported; choose one of {MODEL_TYPES}"
            )
        for name in ("dtype",):
            if getattr(self, name) not in ("auto", *DTYPES):
                raise ValueError(f"--{name} must be auto or one of {list(DTYPES)}")
        for name in ("latent_dtype", "embed_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"--{name} must be one of {list(DTYPES)}")
        if self.verify < 0 or self.text_batch_size < 1:
            raise ValueError("--verify must be >= 0 and --text_batch_size >= 1")
        # The folder's rules (CogVideoX 1.5 pairs latent frames), read from its configs; nothing loads.
        rules = get_adapter_class(self.model_type)(self.model_path).rules
        problems = [
            p for p in (rules.frame_error(self.num_frames), rules.size_error(self.height, self.width)) if p
        ]
        if problems:
            raise ValueError(f"{self.model_type}: " + "; ".join(problems))
        # Fail on bad frame settings here, before any model is loaded.
        self.frame_spec()

    def frame_spec(self) -> FrameSpec:
        return FrameSpec(
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            train_fps=self.train_fps,
            skip_frames_start=self.skip_frames_start,
            skip_frames_end=self.skip_frames_end,
            window=self.frame_window,
            crop=self.crop,
        )

    def defining(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_path"] = str(Path(self.model_path).resolve())
        return {
            **{k: d[k] for k in OUTPUT_DEFINING},
            "model_fingerprint": model_fingerprint(Path(self.model_path)),
        }


def model_fingerprint(model_path: Path) -> str:
    """Changes when the encoders at ``model_path`` change (e.g. a rebuilt tiny model at the same path)."""
    return component_fingerprint(model_path, ("vae", "text_encoder", "image_encoder"))


@dataclass
class RankResult:
    """What one rank did, gathered to rank 0 for the report."""

    done: int = 0
    reused: int = 0
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Layout:
    """Paths inside OUTPUT_DIR for one model folder (:mod:`fastvideo.dataset.layout`)."""

    def __init__(self, root: str | Path, adapter: ModelAdapter):
        self.root = Path(root)
        self.conditions = condition_fields(adapter.condition_keys)
        self.text = condition_fields(adapter.text_condition_keys)
        self.image = condition_fields(adapter.image_condition_keys)
        self.text_sees_image = adapter.prompt_sees_image  # the text record depends on the clip's first frame
        self.validation = self.root / VALIDATION_DIR
        self.verify = self.root / "verify"

    @property
    def folders(self) -> list[Path]:
        """Everything preprocessing writes in folders (what --overwrite clears)."""
        tensors = [self.root / f.folder for f in (LATENTS, *self.conditions)]
        return [*tensors, self.validation, self.verify]

    def latent_file(self, item: Item) -> Path:
        return item_file(self.root, LATENTS, item.name)

    def condition_files(self, name: str, root: Path | None = None, part: str = "all") -> dict[str, Path]:
        """Where item ``name``'s conditioning tensors go (under ``root``, by default OUTPUT_DIR): ``part``
        all, text (the text pass's) or image (the VAE pass's, image-to-video)."""
        fields = {"all": self.conditions, "text": self.text, "image": self.image}[part]
        return {f.name: item_file(root or self.root, f, name) for f in fields}

    def has_latent(self, item: Item) -> bool:
        """The VAE pass's outputs: latents, and for image-to-video the first frame's conditioning."""
        files = [self.latent_file(item), *self.condition_files(item.name, part="image").values()]
        return all(p.is_file() for p in files)

    def has_text(self, item: Item) -> bool:
        return all(p.is_file() for p in self.condition_files(item.name, part="text").values())

    def record(self, item: Item) -> dict:
        return record_for(item.name, [LATENTS, *self.conditions])


def media_signature(item: Item) -> str:
    stat = item.media_path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def item_rng(seed: int, item: Item) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(item.name.encode())])


def model_dtype(cfg: PreprocessConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.dtype]


# --- checks before any work ----------------------------------------------------------------------
def check_output_dir(cfg: PreprocessConfig) -> None:
    """Refuse to mix outputs of different settings in one OUTPUT_DIR (stale caches)."""
    path = Path(cfg.output_dir) / CONFIG_FILE
    if not path.is_file() or cfg.overwrite:
        return
    previous = json.loads(path.read_text())
    changed = [
        f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in cfg.defining().items() if previous.get(k) != v
    ]
    if changed:
        raise ValueError(
            f"{cfg.output_dir} holds a dataset made with other settings ({'; '.join(changed)}). "
            "Use a new OUTPUT_DIR, or pass --overwrite to discard it."
        )


def reset_output_dir(cfg: PreprocessConfig) -> None:
    """With --overwrite and changed settings, clear the outputs so nothing stale is reused."""
    import shutil

    layout = Layout(cfg.output_dir, get_adapter_class(cfg.model_type)(cfg.model_path))
    path = layout.root / CONFIG_FILE
    if path.is_file() and json.loads(path.read_text()) != cfg.defining():
        for folder in layout.folders:
            shutil.rmtree(folder, ignore_errors=True)
        for name in (INDEX_FILE, REPORT_FILE, NULL_CONDITION_FILE):
            (layout.root / name).unlink(missing_ok=True)


def previous_records(layout: Layout) -> dict[str, dict]:
    path = layout.root / INDEX_FILE
    if not path.is_file():
        return {}
    return {rec[LATENTS.key][: -len(".pt")]: rec for rec in json.loads(path.read_text())}


def invalidate_changed(items: list[Item], layout: Layout, previous: dict[str, dict]) -> None:
    """Drop finished outputs whose source media or caption changed since the last run."""
    for item in items:
        rec = previous.get(item.name)
        if rec is None:
            continue
        media_changed = rec.get("media_signature") != media_signature(item)
        if media_changed:
            layout.latent_file(item).unlink(missing_ok=True)
        if rec.get("caption") != item.caption or (media_changed and layout.text_sees_image):
            for path in layout.condition_files(item.name, part="text").values():
                path.unlink(missing_ok=True)


# --- the two passes ------------------------------------------------------------------------------
def progress(items, dist_info: DistInfo, desc: str, unit: str = "item"):
    return tqdm(
        items,
        desc=f"{desc} [rank 0 of {dist_info.world_size}]" if dist_info.world_size > 1 else desc,
        unit=unit,
        disable=not dist_info.is_main,
        dynamic_ncols=True,
    )


def vae_pass(cfg, adapter: ModelAdapter, items: list[Item], layout: Layout, dist_info, result: RankResult):
    todo = [it for it in items if not layout.has_latent(it)]
    result.reused += len(items) - len(todo)
    if not todo:
        return
    vae = adapter.load_vae()
    if adapter.image_to_video:
        adapter.load_image_encoder()
    spec = cfg.frame_spec()
    for item in progress(todo, dist_info, "VAE encode"):
        try:
            clip = load_media(item.media_path, spec, rng=item_rng(cfg.seed, item))
        except MediaError as err:
            result.skipped.append({"item": str(item.media_path), "origin": item.origin, "reason": str(err)})
            continue
        result.notes += [{"item": str(item.media_path), "note": note} for note in clip.notes]
        latents = adapter.encode_video(vae, clip.frames.unsqueeze(0))[0]
        if adapter.image_to_video:
            write_first_frame_condition(cfg, adapter, vae, clip.frames, layout, item)
        atomic_torch_save(latents.to(DTYPES[cfg.latent_dtype]).contiguous(), layout.latent_file(item))
        result.done += 1
    del vae


def write_first_frame_condition(cfg, adapter: ModelAdapter, vae, frames: torch.Tensor, layout: Layout, item):
    """Image-to-video: the conditioning of the clip's first frame (as the 8-bit image it was decoded from).
    The first-frame latents keep --latent_dtype, the CLIP tokens --embed_dtype."""
    _, num_frames, height, width = frames.shape
    image = adapter.frame_image(frames[:, 0])
    cond = adapter.encode_first_frames(vae, [image], num_frames, height, width)
    for name, path in layout.condition_files(item.name, part="image").items():
        dtype = DTYPES[cfg.latent_dtype] if name == "image_latents" else DTYPES[cfg.embed_dtype]
        atomic_torch_save(stored(cond[name][0], dtype), path)


def text_pass(cfg, adapter: ModelAdapter, items: list[Item], layout: Layout, dist_info, prompts: list[str]):
    todo = [it for it in items if layout.has_latent(it) and not layout.has_text(it)]
    null_file = layout.root / NULL_CONDITION_FILE
    write_null = dist_info.is_main and not null_file.is_file()
    if not todo and not prompts and not write_null:
        return
    adapter.load_text_encoder()
    embed_dtype = DTYPES[cfg.embed_dtype]
    batches = [todo[i : i + cfg.text_batch_size] for i in range(0, len(todo), cfg.text_batch_size)]
    for batch in progress(batches, dist_info, "Text encode", unit="batch"):
        cond = encode_captions(cfg, adapter, [with_id_token(cfg.id_token, it.caption) for it in batch], batch)
        for j, item in enumerate(batch):
            for name, path in layout.condition_files(item.name, part="text").items():
                atomic_torch_save(stored(cond[name][j], embed_dtype), path)
    if prompts:
        prompts = [with_id_token(cfg.id_token, p) for p in prompts]
        write_validation(cfg, adapter, prompts, layout, embed_dtype, items)
    if write_null:
        # The unconditional input of families that train against the encoded empty prompt (Wan).
        empty = adapter.encode_prompts([""])
        atomic_torch_save({k: stored(v[0], embed_dtype) for k, v in empty.items()}, null_file)
    adapter.unload_text_encoder()


def stored(tensor: torch.Tensor, embed_dtype: torch.dtype) -> torch.Tensor:
    """A condition tensor as written: floats in --embed_dtype, masks as they are; no view of a batch."""
    return (tensor.to(embed_dtype) if tensor.is_floating_point() else tensor).contiguous().clone()


def encode_captions(cfg, adapter: ModelAdapter, captions: list[str], items: list[Item]):
    """The text record of ``items``' captions; a family whose text encoder sees the first frame
    (``adapter.prompt_sees_image``, HunyuanVideo image-to-video) encodes each with its clip's first frame."""
    if not adapter.prompt_sees_image:
        return adapter.encode_prompts(captions)
    return adapter.encode_prompts(captions, images=[first_frame_image(cfg, adapter, it) for it in items])


def first_frame_image(cfg, adapter: ModelAdapter, item: Item):
    """The clip's first frame as the VAE pass saw it (same frames, same crop), as an 8-bit image."""
    clip = load_media(item.media_path, cfg.frame_spec(), rng=item_rng(cfg.seed, item))
    return adapter.frame_image(clip.frames[:, 0])


def write_validation(
    cfg, adapter: ModelAdapter, prompts: list[str], layout: Layout, embed_dtype, items
) -> None:
    """The validation prompts' records. Where the text encoder sees the first frame, prompt i is encoded with
    the first frame of this rank's i-th encoded clip (cyclically), and its record also holds that clip's
    image conditioning, so validation samples with the frame the text saw."""
    sources = [it for it in items if layout.has_latent(it)] if adapter.prompt_sees_image else []
    chosen = [sources[i % len(sources)] for i in range(len(prompts))] if sources else []
    cond = encode_captions(cfg, adapter, prompts, chosen) if chosen else adapter.encode_prompts(prompts)
    records = []
    for i, prompt in enumerate(prompts):
        for name, path in layout.condition_files(str(i), root=layout.validation, part="text").items():
            atomic_torch_save(stored(cond[name][i], embed_dtype), path)
        record = {"caption": prompt, **record_for(str(i), layout.text)}
        if chosen:
            image_files = layout.condition_files(chosen[i].name, part="image")
            for name, path in layout.condition_files(str(i), root=layout.validation, part="image").items():
                atomic_torch_save(torch.load(image_files[name], map_location="cpu", weights_only=True), path)
            record |= {**record_for(str(i), layout.image), "first_frame_of": str(chosen[i].media_path)}
        records.append(record)
    atomic_write_json(records, layout.validation / INDEX_FILE)


def verify_pass(cfg, adapter: ModelAdapter, items: list[Item], layout: Layout, result: RankResult) -> None:
    """Decode latents back to pixels, written beside the model input: [input | reconstruction]."""
    if not items:
        return
    vae = adapter.load_vae()
    spec = cfg.frame_spec()
    for item in items:
        clip = load_media(item.media_path, spec, rng=item_rng(cfg.seed, item))
        latents = torch.load(layout.latent_file(item), map_location="cpu").float().unsqueeze(0)
        decoded = adapter.decode_latents(vae, latents)[0].cpu()
        side_by_side = torch.cat([clip.frames, decoded[:, : clip.frames.shape[1]]], dim=-1)
        out = layout.verify / f"{item.name}.mp4"
        write_video(out, side_by_side, fps=cfg.train_fps)
        result.verified.append(str(out))
    del vae


# --- index and report ----------------------------------------------------------------------------
def write_index(cfg, adapter: ModelAdapter, items: list[Item], layout: Layout) -> list[dict]:
    records = []
    video_t = adapter.rules.latent_shape(cfg.num_frames, cfg.height, cfg.width, 1)[1]
    for item in items:
        if not (layout.has_latent(item) and layout.has_text(item)):
            continue
        records.append(
            {
                **layout.record(item),
                "caption": item.caption,
                "length": 1 if item.kind == "image" else video_t,
                "num_frames": 1 if item.kind == "image" else cfg.num_frames,
                "height": cfg.height,
                "width": cfg.width,
                "kind": item.kind,
                "media_path": str(item.media_path),
                "media_signature": media_signature(item),
            }
        )
    atomic_write_json(records, layout.root / INDEX_FILE)
    return records


def write_report(cfg, layout: Layout, records, source_skips, results: list[RankResult], total: int) -> dict:
    skipped = [{"item": s.what, "origin": "", "reason": s.reason} for s in source_skips]
    skipped += [s for r in results for s in r.skipped]
    report = {
        "settings": dataclasses.asdict(cfg),
        "items_found": total + len(source_skips),
        "items_ready": len(records),
        "encoded_this_run": sum(r.done for r in results),
        "reused_from_earlier_runs": sum(r.reused for r in results),
        "skipped": skipped,
        "notes": [n for r in results for n in r.notes],
        "verify_videos": [v for r in results for v in r.verified],
        "seconds": max(r.seconds for r in results),
    }
    atomic_write_json(report, layout.root / REPORT_FILE)
    return report


def print_summary(report: dict, layout: Layout) -> None:
    secs = report["seconds"]
    rate = report["encoded_this_run"] / secs if secs > 0 else 0.0
    print(
        f"\n{report['items_ready']} of {report['items_found']} items ready in {layout.root} "
        f"({report['encoded_this_run']} encoded now, {report['reused_from_earlier_runs']} reused; "
        f"{secs:.1f} s, {rate:.2f} items/s)"
    )
    if report["skipped"]:
        print(f"{len(report['skipped'])} skipped (details in {layout.root / REPORT_FILE}):")
        for s in report["skipped"]:
            print(f"  - {s['item']}: {s['reason']}")
    for n in report["notes"]:
        print(f"  note: {n['item']}: {n['note']}")
    for v in report["verify_videos"]:
        print(f"  verify: {v}")


# --- entry point ---------------------------------------------------------------------------------
def with_id_token(id_token: str, caption: str) -> str:
    return f"{id_token} {caption}" if id_token else caption


def read_prompts(cfg: PreprocessConfig) -> list[str]:
    prompts = []
    if cfg.validation_prompt_txt:
        prompts += Path(cfg.validation_prompt_txt).read_text(encoding="utf-8").splitlines()
    if cfg.validation_prompts:
        prompts += cfg.validation_prompts.split(cfg.validation_prompt_separator)
    return [p.strip() for p in prompts if p.strip()]


def run(cfg: PreprocessConfig, dist_info: DistInfo) -> int:
    """Preprocess the whole source on every rank of the job; the exit code (0, or 1 if nothing succeeded)."""
    check_model_path(cfg)
    check_output_dir(cfg)
    lock = lock_on_main(cfg.output_dir, dist_info)  # one job per OUTPUT_DIR
    try:
        return preprocess(cfg, dist_info)
    finally:
        if lock is not None:
            lock.release()


def preprocess(cfg: PreprocessConfig, dist_info: DistInfo) -> int:
    adapter_cls = get_adapter_class(cfg.model_type)
    adapter = adapter_cls(
        cfg.model_path,
        device=dist_info.device,
        dtype=model_dtype(cfg, dist_info.device),
        vae_tiling=cfg.vae_tiling,
    )
    layout = Layout(cfg.output_dir, adapter)
    items, source_skips = collect_items(
        data_merge_path=cfg.data_merge_path,
        data_dir=cfg.data_dir,
        caption_column=cfg.caption_column,
        video_column=cfg.video_column,
    )
    prompts = read_prompts(cfg)
    dist_info.barrier()
    if dist_info.is_main:
        if cfg.overwrite:
            reset_output_dir(cfg)
        layout.root.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_files(layout.root)
        invalidate_changed(items, layout, previous_records(layout))
        atomic_write_json(cfg.defining(), layout.root / CONFIG_FILE)
    dist_info.barrier()

    started = time.perf_counter()
    mine = items[dist_info.rank :: dist_info.world_size]
    result = RankResult()
    vae_pass(cfg, adapter, mine, layout, dist_info, result)
    text_pass(cfg, adapter, mine, layout, dist_info, prompts if dist_info.is_main else [])
    to_verify = [it for it in items[: cfg.verify] if it in mine and layout.has_latent(it)]
    verify_pass(cfg, adapter, to_verify, layout, result)
    result.seconds = time.perf_counter() - started

    results = dist_info.gather_to_main(result)
    if not dist_info.is_main:
        return 0
    records = write_index(cfg, adapter, items, layout)
    report = write_report(cfg, layout, records, source_skips, results, len(items))
    print_summary(report, layout)
    if not records:
        print("error: no item could be preprocessed", file=sys.stderr)
        return 1
    if cfg.strict and report["skipped"]:
        print("error: --strict and some items were skipped", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> PreprocessConfig:
    return parse_config(PreprocessConfig, argv, description=__doc__, required=("output_dir",))


def check_model_path(cfg: PreprocessConfig) -> None:
    path = Path(cfg.model_path)
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"MODEL_PATH {path} is not a diffusers model directory (no model_index.json). Build the tiny "
            f"default with `python -m fastvideo.models.tiny --output {path}` or download real weights with "
            "`python scripts/download_hf.py --repo_id genmo/mochi-1-preview --local_dir <dir>`."
        )


def preflight(argv: list[str], world_size: int, single_node: bool = True) -> None:
    """What ``python -m fastvideo.launch`` checks once before starting the workers (ValueError)."""
    cfg = parse_args(argv)
    check_model_path(cfg)
    check_output_dir(cfg)
    if single_node:
        check_free(cfg.output_dir)


def main(argv: list[str] | None = None) -> int:
    return launch(PreprocessConfig, run, argv, __doc__, required=("output_dir",))


if __name__ == "__main__":
    sys.exit(main())
