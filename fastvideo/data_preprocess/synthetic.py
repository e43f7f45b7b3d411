"""Generate a small synthetic video dataset (real mp4 files) in every input format fastvideo reads.

Each clip shows one coloured shape (circle, square or triangle) moving smoothly in a straight line
(left, right, up or down) across a dark background, captioned e.g. "a red circle moving right"; a few
still images (.png) are captioned e.g. "a blue square". Everything is deterministic from ``seed``.
``describe_clip`` reads such a caption back from a clip's pixels (to check decoded or sampled videos).
Clips are encoded with ffmpeg through imageio-ffmpeg (libx264, yuv420p, faststart) so any decoder
reads them. The media are written once, into the Mochi-style folder, and every other format points
there with relative paths, so the dataset can be moved as a whole::

    <output>/
      manifest.json                      parameters and captions; marks the folder as ours to rewrite
      mochi/clip_000.mp4 + clip_000.txt, ..., img_000.png + img_000.txt   (the only copy of the media)
      cogvideox/prompts.txt + videos.txt   (paths like ../mochi/clip_000.mp4)
      csv/metadata.csv                     (columns caption,video)
      jsonl/metadata.jsonl                 (keys caption,video)
      merge/merge.txt + merge/videos.json  ("../mochi,videos.json"; FastVideo item format)

With ``--with_bad_items`` the Mochi folder also gets one example of every broken input (see
``add_bad_items``) and ``<output>/with_missing_path/`` holds the list formats again with one entry
whose media file does not exist (see ``write_lists_with_missing_path``).

Run::

    python -m fastvideo.data_preprocess.synthetic --output data/synthetic
    python -m fastvideo.data_preprocess.synthetic --output data/synthetic --num_videos 16 --with_bad_items
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from fastvideo.io import atomic_path, atomic_write_json, atomic_write_text

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUND = (14, 14, 22)

MANIFEST = "manifest.json"
# Subfolders this module creates and may delete when regenerating a dataset it wrote before.
OWNED_SUBDIRS = ("mochi", "cogvideox", "csv", "jsonl", "merge", "with_missing_path")

# add_bad_items: file name -> kind of problem.
BAD_ITEMS = {
    "bad_zero_bytes.mp4": "zero_bytes",
    "bad_truncated.mp4": "truncated",
    "bad_not_a_video.mp4": "not_a_video",
    "bad_too_short.mp4": "too_short",
    "bad_no_caption.mp4": "no_caption",
    "bad_empty_caption.mp4": "empty_caption",
    "bad_caption_not_utf8.mp4": "caption_not_utf8",
}
# Kinds that sources.collect_items reports as Skipped; the others have a usable caption and are
# only caught when the decoder opens the file.
SOURCE_PROBLEMS = frozenset({"no_caption", "empty_caption", "caption_not_utf8"})
DECODE_PROBLEMS = frozenset(BAD_ITEMS.values()) - SOURCE_PROBLEMS
TOO_SHORT_SECONDS = 0.3
MISSING_MEDIA_NAME = "missing_clip.mp4"


@dataclass
class SyntheticDataset:
    """Paths of everything written, so tests and the quickstart can use any input format."""

    root: Path
    mochi_dir: Path
    cogvideox_dir: Path
    csv_path: Path
    jsonl_path: Path
    merge_path: Path
    captions: dict[str, str]  # media file name -> caption


@dataclass(frozen=True)
class ShapeSpec:
    """What one clip or image shows; ``direction`` is None for a still image."""

    colour: str
    shape: str
    direction: str | None
    across: float  # position on the axis perpendicular to the motion, as a fraction of the frame

    @property
    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        still = f"{article} {self.colour} {self.shape}"
        return still if self.direction is None else f"{still} moving {self.direction}"


# ----------------------------------------------------------------------------- drawing


def shape_radius(height: int, width: int) -> float:
    return max(3.0, 0.15 * min(height, width))


def _margin(radius: float) -> float:
    # The triangle reaches 1.3 * radius from its centre; keep every shape fully inside the frame.
    return math.ceil(1.3 * radius) + 2


def shape_coverage(
    shape: str, cx: float, cy: float, radius: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Fraction of each pixel covered by the shape (a 1-pixel soft edge, so motion looks smooth)."""
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        inside = radius - np.hypot(dx, dy)
    elif shape == "square":
        inside = 0.85 * radius - np.maximum(np.abs(dx), np.abs(dy))
    elif shape == "triangle":
        # Upward equilateral triangle with circumradius R: the distance to each edge line is
        # R/2 minus the projection on that edge's outward normal (down, up-right, up-left).
        big = 1.3 * radius
        s, c = 0.5, math.sqrt(3) / 2
        reach = np.maximum(dy, np.maximum(c * dx - s * dy, -c * dx - s * dy))
        inside = big / 2 - reach
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.clip(inside + 0.5, 0.0, 1.0)


def shape_centre(spec: ShapeSpec, t: float, height: int, width: int) -> tuple[float, float]:
    """Centre (x, y) at time ``t`` in [0, 1]: linear travel from one margin to the opposite one."""
    margin = _margin(shape_radius(height, width))
    across_x = margin + spec.across * (width - 2 * margin)
    across_y = margin + spec.across * (height - 2 * margin)
    if spec.direction is None:
        return across_x, margin + (1 - spec.across) * (height - 2 * margin)
    along = {"right": t, "left": 1 - t, "down": t, "up": 1 - t}[spec.direction]
    if spec.direction in ("left", "right"):
        return margin + along * (width - 2 * margin), across_y
    return across_x, margin + along * (height - 2 * margin)


def render_frame(spec: ShapeSpec, t: float, height: int, width: int) -> np.ndarray:
    """One RGB uint8 frame (height, width, 3) of ``spec`` at time ``t``."""
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    cx, cy = shape_centre(spec, t, height, width)
    alpha = shape_coverage(spec.shape, cx, cy, shape_radius(height, width), xs, ys)[..., None]
    background = np.asarray(BACKGROUND, dtype=np.float32)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    return np.round(background + alpha * (colour - background)).astype(np.uint8)


def clip_frames(spec: ShapeSpec, num_frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    for k in range(num_frames):
        yield render_frame(spec, k / max(1, num_frames - 1), height, width)


# describe_clip: a pixel belongs to the shape when its RGB is this far (sum of absolute
# differences, 0-765) from BACKGROUND; a shape whose centroid travels less than MIN_TRAVEL
# (fraction of the frame) is still.
FOREGROUND_DISTANCE = 90
MIN_TRAVEL = 0.15


def nearest_colour(rgb: np.ndarray) -> str:
    """The COLOURS entry whose direction from BACKGROUND is closest to ``rgb``'s.

    A shape blended with the background (soft edges, blur, a dim decode) lies on the line from
    BACKGROUND to its colour, so the direction, not the distance, names the colour.
    """
    background = np.asarray(BACKGROUND, np.float32)
    offset = np.asarray(rgb, np.float32) - background

    def cosine(name: str) -> float:
        target = np.asarray(COLOURS[name], np.float32) - background
        return float(offset @ target / (np.linalg.norm(offset) * np.linalg.norm(target) + 1e-6))

    return max(COLOURS, key=cosine)


def describe_clip(frames: np.ndarray, *, min_pixels: int = 4) -> ShapeSpec | None:
    """Read back what a clip of this kind shows: frames [T, H, W, 3] uint8 -> ShapeSpec, or None.

    The inverse of ``clip_frames``, for checking generated or decoded videos: the shape's pixels are
    those far from BACKGROUND; its colour is the COLOURS entry nearest their mean
    (``nearest_colour``); its kind follows from how much of its bounding box it fills (square ~1,
    circle ~pi/4, triangle ~1/2); its direction from the travel of its centroid between the first
    and last thirds of the frames that show it.
    ``across`` is the centroid's mean position across the motion, as a fraction of the frame. None
    when fewer than two frames show ``min_pixels`` shape pixels.
    """
    distance = np.abs(frames.astype(np.float32) - np.asarray(BACKGROUND, np.float32)).sum(-1)
    masks = [mask for mask in distance > FOREGROUND_DISTANCE if mask.sum() >= min_pixels]
    if len(masks) < 2:
        return None
    height, width = masks[0].shape
    centres, fills = [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        centres.append(((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height))
        fills.append(mask.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)))
    colour = nearest_colour(frames[distance > FOREGROUND_DISTANCE].astype(np.float32).mean(0))
    fill = float(np.median(fills))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    third = max(1, len(centres) // 3)
    (x0, y0), (x1, y1) = np.mean(centres[:third], 0), np.mean(centres[-third:], 0)
    dx, dy = x1 - x0, y1 - y0
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        direction, across = None, float(np.mean(centres, 0)[0])
    elif abs(dx) >= abs(dy):
        direction, across = ("right" if dx > 0 else "left"), float(np.mean([c[1] for c in centres]))
    else:
        direction, across = ("down" if dy > 0 else "up"), float(np.mean([c[0] for c in centres]))
    return ShapeSpec(colour, shape, direction, across)


def matching_properties(prompt: str, described: ShapeSpec | None) -> tuple[int, int]:
    """(properties ``described`` shows as asked, properties ``prompt`` names) of colour, shape, direction."""
    words = prompt.split()
    shown_words = described.caption.split() if described else []
    shown = asked = 0
    for vocabulary in (COLOURS, SHAPES, DIRECTIONS):
        wanted = next((w for w in words if w in vocabulary), None)
        got = next((w for w in shown_words if w in vocabulary), None)
        asked += wanted is not None
        shown += wanted is not None and wanted == got
    return shown, asked


# ----------------------------------------------------------------------------- writing


def write_mp4(path: Path, frames: Iterator[np.ndarray], *, fps: float, height: int, width: int) -> None:
    """Encode RGB frames to an H.264/yuv420p mp4, atomically."""
    output_params = [
        *("-crf", "12", "-preset", "veryfast"),  # near-lossless colours for the colour checks
        *("-movflags", "+faststart"),  # index first, as on the web (makes truncation realistic)
        *("-f", "mp4"),  # the temp name does not end in .mp4, so name the container
    ]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=2,  # sizes are even; never let ffmpeg rescale
            ffmpeg_log_level="error",
            output_params=output_params,
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()


def write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_caption(media_path: Path, caption: str) -> None:
    atomic_write_text(caption + "\n", media_path.with_suffix(".txt"))


# ----------------------------------------------------------------------------- planning


def plan_clips(seed: int, count: int) -> list[ShapeSpec]:
    """Distinct (colour, shape, direction) combinations in a seeded order; repeats only past 84."""
    rng = np.random.default_rng([seed, 0])
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    order = rng.permutation(len(combos))
    specs = []
    for i in range(count):
        colour, shape, direction = combos[order[i % len(combos)]]
        specs.append(ShapeSpec(colour, shape, direction, float(rng.uniform(0.2, 0.8))))
    return specs


def plan_images(seed: int, count: int) -> list[ShapeSpec]:
    rng = np.random.default_rng([seed, 1])
    combos = list(itertools.product(COLOURS, SHAPES))
    order = rng.permutation(len(combos))
    specs = []
    for i in range(count):
        colour, shape = combos[order[i % len(combos)]]
        specs.append(ShapeSpec(colour, shape, None, float(rng.uniform(0.2, 0.8))))
    return specs


def truncation_point(mp4: bytes) -> int:
    """Byte count of a realistic truncated download: the index (moov) whole, a third of the rest.

    A cut inside the index makes the file unopenable, which any decoder notices; keeping the index
    makes the file open and announce all its frames, then fail mid-stream, the case that
    matters. Without a leading index (no faststart) this is simply the first third of the bytes.
    """
    offset = 0
    while offset + 8 <= len(mp4):
        size, box = struct.unpack(">I4s", mp4[offset : offset + 8])
        if box == b"mdat" or size < 8:
            break
        if box == b"moov":
            end = offset + size
            return end + (len(mp4) - end) // 3
        offset += size
    return len(mp4) // 3


def _check_parameters(num_videos: int, num_images: int, seconds: float, fps: float, height: int, width: int):
    if num_videos < 0 or num_images < 0 or num_videos + num_images == 0:
        raise ValueError("need at least one video or image (num_videos, num_images >= 0)")
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 32 (yuv420p), got {height}x{width}")
    if seconds <= 0 or fps <= 0 or round(seconds * fps) < 2:
        raise ValueError(f"seconds * fps must give at least 2 frames, got {seconds} s at {fps} fps")


# ----------------------------------------------------------------------------- list formats


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _write_list_formats(root: Path, mochi_dir: Path, entries: list[dict[str, Any]]) -> dict[str, Path]:
    """Write CogVideoX, CSV, JSONL and merge-file versions of ``entries`` (FastVideo JSON items).

    Each entry's ``path`` is relative to ``mochi_dir``; every format stores paths relative to its
    own folder, as its convention requires.
    """
    cog, csv_dir, jsonl_dir, merge_dir = (root / n for n in ("cogvideox", "csv", "jsonl", "merge"))
    captions = [e["cap"][0] for e in entries]

    def media_from(folder: Path) -> list[str]:
        return [_relative(mochi_dir / e["path"], folder) for e in entries]

    atomic_write_text("".join(c + "\n" for c in captions), cog / "prompts.txt")
    atomic_write_text("".join(p + "\n" for p in media_from(cog)), cog / "videos.txt")

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["caption", "video"])
    writer.writerows(zip(captions, media_from(csv_dir), strict=True))
    atomic_write_text(table.getvalue(), csv_dir / "metadata.csv")

    rows = zip(captions, media_from(jsonl_dir), strict=True)
    lines = [json.dumps({"caption": c, "video": v}, ensure_ascii=False) + "\n" for c, v in rows]
    atomic_write_text("".join(lines), jsonl_dir / "metadata.jsonl")

    atomic_write_json(entries, merge_dir / "videos.json")
    atomic_write_text(f"{_relative(mochi_dir, merge_dir)},videos.json\n", merge_dir / "merge.txt")
    return {
        "cogvideox_dir": cog,
        "csv_path": csv_dir / "metadata.csv",
        "jsonl_path": jsonl_dir / "metadata.jsonl",
        "merge_path": merge_dir / "merge.txt",
    }


def _video_entry(name: str, caption: str, *, fps: float, num_frames: int, height: int, width: int):
    return {
        "path": name,
        "resolution": {"width": width, "height": height},
        "fps": fps,
        "duration": num_frames / fps,
        "num_frames": num_frames,
        "cap": [caption],
    }


def write_lists_with_missing_path(
    dataset: SyntheticDataset, out_dir: str | os.PathLike, missing_name: str = MISSING_MEDIA_NAME
) -> SyntheticDataset:
    """Write the list formats again under ``out_dir`` with one extra entry whose media is missing.

    The extra entry sits in the middle of each list, so a reader must skip it ("media file not
    found") and still return every good item. The returned dataset shares ``mochi_dir`` and
    ``captions`` with ``dataset``; its list-format paths point into ``out_dir``.
    """
    out_dir = Path(out_dir)
    entries = json.loads((dataset.merge_path.parent / "videos.json").read_text(encoding="utf-8"))
    missing = {"path": missing_name, "cap": ["a green square moving up"]}
    entries.insert(len(entries) // 2, missing)
    paths = _write_list_formats(out_dir, dataset.mochi_dir, entries)
    return SyntheticDataset(out_dir, dataset.mochi_dir, captions=dict(dataset.captions), **paths)


# ----------------------------------------------------------------------------- dataset


def _prepare_root(root: Path) -> None:
    """Make ``root`` ready to write; clear a dataset this module wrote before, refuse anything else.

    Stale clips from an earlier, larger run would otherwise stay in the Mochi folder and be read
    as data.
    """
    if root.is_dir() and any(root.iterdir()):
        if not (root / MANIFEST).is_file():
            raise FileExistsError(f"{root} is not empty and has no {MANIFEST}; choose an empty or new folder")
        for sub in OWNED_SUBDIRS:
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"status": "incomplete"}, root / MANIFEST)


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    num_videos: int = 8,
    num_images: int = 2,
    seconds: float = 2.0,
    fps: float = 30,
    height: int = 96,
    width: int = 160,
    seed: int = 0,
    show_progress: bool = False,
) -> SyntheticDataset:
    """Write clips and images into ``out_dir`` in every input format; see the module docstring."""
    _check_parameters(num_videos, num_images, seconds, fps, height, width)
    root = Path(out_dir)
    _prepare_root(root)
    mochi = root / "mochi"
    num_frames = round(seconds * fps)
    entries: list[dict[str, Any]] = []
    bar = tqdm(total=num_videos + num_images, desc="synthetic media", unit="file", disable=not show_progress)
    for i, spec in enumerate(plan_clips(seed, num_videos)):
        name = f"clip_{i:03d}.mp4"
        write_mp4(
            mochi / name, clip_frames(spec, num_frames, height, width), fps=fps, height=height, width=width
        )
        write_caption(mochi / name, spec.caption)
        entries.append(
            _video_entry(name, spec.caption, fps=fps, num_frames=num_frames, height=height, width=width)
        )
        bar.update()
    for i, spec in enumerate(plan_images(seed, num_images)):
        name = f"img_{i:03d}.png"
        write_png(mochi / name, render_frame(spec, 0.0, height, width))
        write_caption(mochi / name, spec.caption)
        entries.append({"path": name, "cap": [spec.caption]})
        bar.update()
    bar.close()
    paths = _write_list_formats(root, mochi, entries)
    captions = {e["path"]: e["cap"][0] for e in entries}
    manifest = {
        "status": "complete",
        "parameters": {
            "num_videos": num_videos,
            "num_images": num_images,
            "seconds": seconds,
            "fps": fps,
            "height": height,
            "width": width,
            "seed": seed,
        },
        "captions": captions,
    }
    atomic_write_json(manifest, root / MANIFEST)
    return SyntheticDataset(root, mochi, captions=captions, **paths)


def add_bad_items(
    folder: str | os.PathLike, *, fps: float = 30, height: int = 96, width: int = 160, seed: int = 0
) -> dict[str, str]:
    """Write one example of each broken input into a Mochi-style folder; returns {file name: kind}.

    Kinds (see BAD_ITEMS): zero_bytes, truncated (a real clip cut a third into its frame data, see
    ``truncation_point``), not_a_video
    (text renamed .mp4), too_short (0.3 s), each with a valid caption, so only the decoder can
    catch them (DECODE_PROBLEMS); and no_caption, empty_caption, caption_not_utf8 (latin-1 bytes),
    each with a valid 2 s clip, which sources.collect_items skips (SOURCE_PROBLEMS).
    A media path that does not exist only makes sense in list formats: see
    ``write_lists_with_missing_path``.
    """
    folder = Path(folder)
    spec = plan_clips(seed, 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        good, short = Path(tmp) / "good.mp4", Path(tmp) / "short.mp4"
        write_mp4(
            good, clip_frames(spec, round(2.0 * fps), height, width), fps=fps, height=height, width=width
        )
        short_frames = max(1, round(TOO_SHORT_SECONDS * fps))
        write_mp4(short, clip_frames(spec, short_frames, height, width), fps=fps, height=height, width=width)
        clip, short_clip = good.read_bytes(), short.read_bytes()
    contents = {
        "bad_zero_bytes.mp4": b"",
        "bad_truncated.mp4": clip[: truncation_point(clip)],
        "bad_not_a_video.mp4": b"this is a text file, not a video\n" * 8,
        "bad_too_short.mp4": short_clip,
        "bad_no_caption.mp4": clip,
        "bad_empty_caption.mp4": clip,
        "bad_caption_not_utf8.mp4": clip,
    }
    for name, data in contents.items():
        write_bytes(folder / name, data)
    for name, kind in BAD_ITEMS.items():
        if kind not in SOURCE_PROBLEMS:
            write_caption(folder / name, spec.caption)
    write_caption(folder / "bad_empty_caption.mp4", "  \n\t")
    # "café" in latin-1 is the byte 0xE9 followed by a space: never valid UTF-8.
    write_bytes(folder / "bad_caption_not_utf8.txt", "a café scene with a red circle\n".encode("latin-1"))
    return dict(BAD_ITEMS)


# ----------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate a synthetic video dataset in every input format.")
    parser.add_argument("--output", default="data/synthetic", help="folder to write (default data/synthetic)")
    parser.add_argument("--num_videos", type=int, default=8)
    parser.add_argument("--num_images", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--with_bad_items",
        action="store_true",
        help="also add broken inputs to the Mochi folder and list files with a missing path",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        dataset = make_synthetic_dataset(
            args.output,
            num_videos=args.num_videos,
            num_images=args.num_images,
            seconds=args.seconds,
            fps=args.fps,
            height=args.height,
            width=args.width,
            seed=args.seed,
            show_progress=True,
        )
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {len(dataset.captions)} media files to {dataset.mochi_dir}")
    print(f"  Mochi folder:     --data_dir {dataset.mochi_dir}")
    print(f"  CogVideoX root:   --data_dir {dataset.cogvideox_dir}")
    print(f"  CSV table:        --data_merge_path {dataset.csv_path}")
    print(f"  JSONL table:      --data_merge_path {dataset.jsonl_path}")
    print(f"  FastVideo merge:  --data_merge_path {dataset.merge_path}")
    if args.with_bad_items:
        bad = add_bad_items(
            dataset.mochi_dir, fps=args.fps, height=args.height, width=args.width, seed=args.seed
        )
        missing = write_lists_with_missing_path(dataset, dataset.root / "with_missing_path")
        print(
            f"added {len(bad)} broken inputs to {dataset.mochi_dir}: "
            + ", ".join(f"{n} ({k})" for n, k in bad.items())
        )
        print(f"list formats with a missing media path ({MISSING_MEDIA_NAME}) under {missing.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
