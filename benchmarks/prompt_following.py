"""Does a fine-tuned tiny DiT draw its prompt? Train DiTs of two sizes on every synthetic caption, read samples back.

    python benchmarks/prompt_following.py [--steps 3000 --sizes small,large --threads 2]

1. Data: the tiny Mochi model (its trained VAE) and all 84 synthetic clips (7 colours x 3 shapes x 4
   directions, seed 0), preprocessed at 25 frames, 64x96.
2. DiTs: ``large`` is the embedded default (``TINY_MOCHI_DIT``: 4 blocks, 8 heads x 16, 64-dim time
   and pooled embeddings); ``small``, the default before it (2 blocks, 4 heads x 16, 32-dim), sits
   in a copy of the model folder.
   Each is fine-tuned with ``fastvideo.train`` on one process for ``--steps`` (batch 4, lr 5e-4).
3. Samples: the prompts of ``assets/prompt.txt`` (all three are training captions) x ``--seeds``,
   32 Euler steps on MochiPipeline's schedule, guidance 1 and 4.5, through the sampler.
4. Score: ``describe_clip`` reads colour, kind of shape and direction back from each mp4; the table
   counts the properties that match the prompt.

Work lands in ``data/bench/prompts`` (reused when present; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusers import MochiTransformer3DModel  # noqa: E402

from fastvideo.data_preprocess.synthetic import (  # noqa: E402
    describe_clip,
    make_synthetic_dataset,
    matching_properties,
)
from fastvideo.models.tiny import TINY_MOCHI_DIT, build_tiny  # noqa: E402

FRAMES, HEIGHT, WIDTH = 25, 64, 96
SIZES = {
    "small": dict(
        TINY_MOCHI_DIT, num_attention_heads=4, num_layers=2, time_embed_dim=32, pooled_projection_dim=32
    ),
    "large": TINY_MOCHI_DIT,
}


def run(cmd: list[str], log: Path, threads: int) -> float:
    """Run ``cmd`` in the repository, output to ``log``; seconds taken, or exit with the log's tail."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({log}):\n" + log.read_text()[-3000:])
    return time.perf_counter() - start


def prepare(work: Path, threads: int) -> tuple[Path, Path]:
    """The tiny model and the latents of all 84 clips."""
    model = build_tiny("mochi", work / "tiny-mochi", seed=0)
    data = work / "processed"
    if not (data / "videos2caption.json").is_file():
        clips = make_synthetic_dataset(work / "synthetic", num_videos=84, num_images=0, seed=0)
        print("preprocessing 84 clips")
        run([sys.executable, "-m", "fastvideo.data_preprocess.preprocess", "--model_path", str(model),
             "--data_dir", str(clips.mochi_dir), "--output_dir", str(data), "--num_frames", str(FRAMES),
             "--height", str(HEIGHT), "--width", str(WIDTH), "--validation_prompt_txt", "assets/prompt.txt"],
            work / "preprocess.log", threads)  # fmt: skip
    return model, data


def model_with_dit(work: Path, base: Path, size: str) -> Path:
    """``base`` itself for the default DiT, else a copy whose transformer is a seeded random one of ``size``."""
    if SIZES[size] == TINY_MOCHI_DIT:
        return base
    folder = work / f"tiny-mochi-{size}"
    if not (folder / "model_index.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns("transformer"))
        torch.manual_seed(1)  # what build_tiny uses for the DiT
        MochiTransformer3DModel(**SIZES[size]).save_pretrained(folder / "transformer")
    return folder


def score(videos: list[Path], prompts: list[str]) -> tuple[int, int, list[str]]:
    """(properties shown, properties asked, what each video shows)."""
    shown, asked, seen = 0, 0, []
    for video, prompt in zip(videos, prompts, strict=True):
        described = describe_clip(iio.imread(video, plugin="pyav"))
        hits, named = matching_properties(prompt, described)
        shown, asked = shown + hits, asked + named
        seen.append(described.caption if described else "no shape")
    return shown, asked, seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=str(REPO / "data" / "bench" / "prompts"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sizes", default="small,large", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown --sizes {unknown}; known: {', '.join(SIZES)}")
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    base, data = prepare(work, args.threads)
    prompts = [
        line.strip() for line in (REPO / "assets" / "prompt.txt").read_text().splitlines() if line.strip()
    ]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for size in sizes:
        model = model_with_dit(work, base, size)
        params = sum(p.numel() for p in MochiTransformer3DModel(**SIZES[size]).parameters())
        output = work / f"{size}-{args.steps}"
        train_s = float("nan")  # printed as "reused" when the fine-tuned folder exists
        if not (output / "model_index.json").is_file():
            print(f"fine-tuning the {size} DiT ({params:,} parameters) for {args.steps} steps")
            train_s = run([sys.executable, "-m", "fastvideo.train", "--model_path", str(model),
                           "--data_json_path", str(data), "--output_dir", str(output),
                           "--max_train_steps", str(args.steps), "--train_batch_size", "4", "--learning_rate", "5e-4",
                           "--lr_warmup_steps", "50", "--weight_decay", "0", "--cfg", "0.1",
                           "--validation_steps", str(args.steps + 1), "--checkpointing_steps", str(args.steps + 1)],
                          work / f"{output.name}.log", args.threads)  # fmt: skip
        for guidance in (1.0, 4.5):
            samples = output / f"samples-g{guidance:g}"
            shutil.rmtree(samples, ignore_errors=True)
            run([sys.executable, "fastvideo/sample/sample_t2v_mochi.py", "--model_path", str(output),
                 "--prompt_path", "assets/prompt.txt", "--seeds", args.seeds, "--scheduler_type", "euler",
                 "--num_inference_steps", "32", "--guidance_scale", str(guidance), "--output_path", str(samples),
                 "--num_frames", str(FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH)],
                work / f"{output.name}-sample.log", args.threads)  # fmt: skip
            videos = sorted(samples.glob("*.mp4"))
            shown, asked, seen = score(videos, [p for p in prompts for _ in seeds])
            rows.append((size, params, guidance, train_s, shown, asked, seen))
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.steps} steps, {args.threads} threads, prompts x seeds {seeds}")  # fmt: skip
    print("| DiT | parameters | guidance | fine-tuning s | properties shown | what the samples show |")
    print("|---|---|---|---|---|---|")
    for size, params, guidance, train_s, shown, asked, seen in rows:
        print(
            f"| {size} | {params:,} | {guidance:g} | {'reused' if train_s != train_s else f'{train_s:.0f}'} "
            f"| {shown} of {asked} | {'; '.join(seen)} |"
        )


if __name__ == "__main__":
    main()
