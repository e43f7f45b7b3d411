"""Sampler timing, side by side in one run: 8-step PCM vs 64-step Euler, and SP=1 vs SP=2.

    python benchmarks/bench_sample.py [--model_path data/tiny-mochi --frames 49 --height 128 --width 192]

Runs ``fastvideo/sample/sample_t2v_mochi.py`` (through torchrun for SP=2, gloo on CPU) on a PCM
pipeline folder made from ``--model_path`` (its transformer, a ``PCMFlowScheduler`` on a 50-point
grid), each configuration ``--repeats`` times in turn, 2 prompts x 2 seeds per run. Reports the
median per-video denoising time the sampler prints (the first video of each run is a warm-up and
is dropped) and the ratios. Decoding is the same in every configuration and is not included.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastvideo.models.tiny import build_tiny  # noqa: E402
from fastvideo.schedulers import PCMFlowScheduler  # noqa: E402
from fastvideo.training.export import write_pipeline_folder  # noqa: E402

PROMPTS = "a red circle moving right|a blue square moving up"


def denoise_times(args, folder: Path, nproc: int, extra: list[str]) -> list[float]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    with tempfile.TemporaryDirectory() as out:
        cmd = [*launch, "fastvideo/sample/sample_t2v_mochi.py", "--model_path", str(folder), "--prompts", PROMPTS,
               "--seeds", "0,1", "--num_frames", str(args.frames), "--height", str(args.height), "--width",
               str(args.width), "--output_path", out, *extra]  # fmt: skip
        env = dict(
            os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)), PYTHONPATH=str(REPO)
        )
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    times = [float(t) for t in re.findall(r"\(([\d.]+) s denoising", proc.stdout)]
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_path", default=str(REPO / "data" / "tiny-mochi"))
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = Path(args.model_path)
    if model == REPO / "data" / "tiny-mochi":
        build_tiny("mochi", model)
    folder = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    write_pipeline_folder(folder, model, PCMFlowScheduler(), trained="")

    configs = {
        "euler 64 steps, guidance 4.5, SP=1": (
            1,
            ["--scheduler_type", "euler", "--num_inference_steps", "64"],
        ),
        "euler 64 steps, guidance 4.5, SP=2": (
            2,
            ["--scheduler_type", "euler", "--num_inference_steps", "64"],
        ),
        "euler 64 steps, no guidance, SP=1": (
            1,
            ["--scheduler_type", "euler", "--num_inference_steps", "64", "--guidance_scale", "1"],
        ),  # fmt: skip
        "pcm 8 steps, no guidance, SP=1": (
            1,
            ["--scheduler_type", "pcm_linear_quadratic", "--num_inference_steps", "8"],
        ),
        "pcm 8 steps, no guidance, SP=2": (
            2,
            ["--scheduler_type", "pcm_linear_quadratic", "--num_inference_steps", "8"],
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, (nproc, extra) in configs.items():
            times[name] += denoise_times(args, folder, nproc, extra)
    median = {name: statistics.median(t) for name, t in times.items()}

    print(
        f"# bench_sample, {datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"model {model}, {args.frames} frames at {args.height}x{args.width}, {len(times[next(iter(times))])} "
          "timed videos per configuration")  # fmt: skip
    print("| configuration | median denoising s |")
    print("|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.3f} |")
    euler, pcm = median["euler 64 steps, guidance 4.5, SP=1"], median["pcm 8 steps, no guidance, SP=1"]
    print(f"pcm 8 vs euler 64 with guidance (SP=1): {euler / pcm:.2f}x faster")
    print(
        f"pcm 8 vs euler 64 without guidance (SP=1): {median['euler 64 steps, no guidance, SP=1'] / pcm:.2f}x faster"
    )
    print(f"SP=2 vs SP=1, euler 64: {euler / median['euler 64 steps, guidance 4.5, SP=2']:.2f}x")
    print(f"SP=2 vs SP=1, pcm 8: {pcm / median['pcm 8 steps, no guidance, SP=2']:.2f}x")


if __name__ == "__main__":
    main()
