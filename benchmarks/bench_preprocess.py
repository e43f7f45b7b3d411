"""Preprocessing throughput (clips/s) on the synthetic set: 1 rank against 2 ranks, side by side.

    python benchmarks/bench_preprocess.py [--num_videos 16 --num_frames 25 --height 64 --width 96]

Builds the tiny Mochi model and a synthetic dataset under data/bench/ (once), then runs
``scripts/finetune_data_gen.sh`` with NUM_GPUS=1 and NUM_GPUS=2 into fresh output folders, in
alternating order, ``--repeats`` times each. Reports the median wall time of the whole command
(process start and model loading included) and of the encode passes alone (from the run's
report), as clips/s, with the 2-rank/1-rank ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def prepare(args) -> tuple[Path, Path]:
    from fastvideo.data_preprocess.synthetic import make_synthetic_dataset
    from fastvideo.models.tiny import build_tiny

    root = REPO / "data" / "bench"
    model = build_tiny("mochi", root / "tiny-mochi", seed=0)
    data = root / f"synthetic-{args.num_videos}"
    if not data.is_dir():
        make_synthetic_dataset(data, num_videos=args.num_videos, num_images=0, seed=0)
    return model, data / "mochi"


def run_once(args, model: Path, data: Path, gpus: int) -> tuple[float, float]:
    out = REPO / "data" / "bench" / f"processed-{gpus}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, MODEL_PATH=str(model), DATA_DIR=str(data), OUTPUT_DIR=str(out), NUM_GPUS=str(gpus),
               NUM_FRAMES=str(args.num_frames), HEIGHT=str(args.height), WIDTH=str(args.width), PYTHON=sys.executable,
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // gpus)))  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        ["bash", "scripts/finetune_data_gen.sh"], cwd=REPO, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - start
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["items_ready"] == args.num_videos, report["skipped"]
    return wall, report["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_videos", type=int, default=16)
    parser.add_argument("--num_frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, data = prepare(args)
    times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for gpus in (1, 2):
            times[gpus].append(run_once(args, model, data, gpus))
    print(
        f"# preprocessing throughput, {args.num_videos} clips, {args.num_frames}x{args.height}x{args.width}, tiny Mochi"
    )
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, {datetime.date.today()}, median of {args.repeats}"
    )
    print(f"{'ranks':>5} {'wall s':>8} {'clips/s (wall)':>15} {'encode s':>9} {'clips/s (encode)':>17}")
    med = {}
    for gpus, runs in times.items():
        wall = statistics.median(r[0] for r in runs)
        enc = statistics.median(r[1] for r in runs)
        med[gpus] = (wall, enc)
        print(
            f"{gpus:>5} {wall:>8.2f} {args.num_videos / wall:>15.2f} {enc:>9.2f} {args.num_videos / enc:>17.2f}"
        )
    print(
        f"2-rank / 1-rank throughput: wall {med[1][0] / med[2][0]:.2f}x, encode {med[1][1] / med[2][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
