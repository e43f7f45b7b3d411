"""Lay sampled videos out as a PNG: one row of evenly spaced frames per video, its prompt above it.

    python scripts/video_strip.py outputs/samples/*.mp4 --output assets/quickstart-samples.png

The prompt comes from the sampler's file name (``000-a-red-circle-moving-right-seed0.mp4``).
Frames are enlarged ``--scale`` times with nearest-neighbour sampling, so a 64x96 toy video stays
sharp. The PNG is written atomically. Exit status 2 when a video cannot be read (nothing written).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from fastvideo.io import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from describe_clips import prompt_of  # noqa: E402

GAP, LABEL, BACKGROUND, TEXT = 4, 16, (255, 255, 255), (0, 0, 0)


def label(path: Path) -> str:
    seed = re.search(r"-seed(\d+)$", path.stem)
    return prompt_of(path) + (f" (seed {seed.group(1)})" if seed else "")


def pick_frames(frames: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` frames evenly spaced from the first to the last (positions rounded down)."""
    positions = np.linspace(0, len(frames) - 1, num=min(count, len(frames)))
    return [frames[int(p)] for p in positions]


def strip(frames: list[np.ndarray], scale: int) -> Image.Image:
    h, w = frames[0].shape[:2]
    row = Image.new("RGB", (len(frames) * (w * scale + GAP) - GAP, h * scale), BACKGROUND)
    for i, frame in enumerate(frames):
        tile = Image.fromarray(frame[..., :3]).resize((w * scale, h * scale), Image.NEAREST)
        row.paste(tile, (i * (w * scale + GAP), 0))
    return row


def sheet(rows: list[tuple[str, Image.Image]]) -> Image.Image:
    width = max(row.width for _, row in rows)
    height = sum(row.height + LABEL + GAP for _, row in rows)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw, y = ImageDraw.Draw(image), 0
    for label, row in rows:
        draw.text((0, y + 2), label, fill=TEXT)
        image.paste(row, (0, y + LABEL))
        y += row.height + LABEL + GAP
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path, help="mp4 files, one row each")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--frames", type=int, default=6, help="frames per row (default 6)")
    parser.add_argument("--scale", type=int, default=2, help="enlargement (default 2)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.scale < 1:
        parser.error("--frames and --scale must be >= 1")
    rows = []
    for path in args.videos:
        try:
            frames = iio.imread(path, plugin="pyav")
        except (OSError, ValueError) as err:
            print(f"error: cannot read {path}: {err}; nothing written", file=sys.stderr)
            return 2
        rows.append((label(path), strip(pick_frames(frames, args.frames), args.scale)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        sheet(rows).save(tmp, format="PNG")
    print(f"wrote {args.output} ({len(rows)} videos x {args.frames} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
