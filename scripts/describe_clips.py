"""Say what synthetic-style mp4 clips show, read back from their pixels, beside the prompt they were made from.

    python scripts/describe_clips.py outputs/samples/*.mp4

For videos of the embedded tiny default (one coloured shape moving on a dark background, like the
clips of ``fastvideo.data_preprocess.synthetic``), each line gives the prompt, taken from the
sampler's file name (``000-a-red-circle-moving-right-seed0.mp4``), and what
``describe_clip`` reads back: the colour, the kind of shape and the direction, or "no shape".
The last line counts how many of the three properties match. It measures how far a toy model got;
it says nothing about real footage. Exit status 0 (a report, not a check); 2 when a file could
not be read (reported, the others are still described).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import imageio.v3 as iio

from fastvideo.data_preprocess.synthetic import describe_clip, matching_properties


def prompt_of(path: Path) -> str:
    """The prompt in a sampler file name: ``000-a-red-circle-seed0.mp4`` -> 'a red circle'."""
    return re.sub(r"-seed\d+$", "", re.sub(r"^\d+-", "", path.stem)).replace("-", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", type=Path, help="mp4 files")
    args = parser.parse_args(argv)
    shown = named = unreadable = 0
    for path in args.videos:
        prompt = prompt_of(path)
        try:
            frames = iio.imread(path, plugin="pyav")
        except (OSError, ValueError) as err:  # missing, empty or not a video: report it, go on
            print(f"error: cannot read {path}: {err}", file=sys.stderr)
            unreadable += 1
            continue
        described = describe_clip(frames)
        hits, asked = matching_properties(prompt, described)
        shown, named = shown + hits, named + asked
        print(f"{path.name}: asked '{prompt}', shows '{described.caption if described else 'no shape'}'")
    print(f"{shown} of {named} asked properties (colour, shape, direction) are shown")
    return 2 if unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
