"""Does the few-step student follow its teacher? Train a tiny teacher, distill it, compare on held-out prompts.

    python benchmarks/distill_quality.py [--teacher_steps 1500 --distill_steps 3000 --distill_cfg 0 --schedule linear_quadratic]
    python benchmarks/distill_quality.py --method dmd2 --distill_steps 1000 --distill_cfg 3   # DMD2, 3 levels

1. Data: the tiny Mochi model and ``--clips`` synthetic clips (25 frames, 64x96); the prompts of
   ``--prompts`` shape/colour/direction combinations that no training clip has are held out and
   encoded as the validation prompts.
2. Teacher: ``fastvideo.train`` for ``--teacher_steps`` on one process; its output folder is a
   whole pipeline and becomes the distillation's ``--model_path``.
3. Student: ``fastvideo.distill`` for ``--distill_steps`` with EMA, one phase per sampling step
   (``--multi_phased_distill_schedule 100000-8``) and guidance ``--distill_cfg`` w distilled in; with
   ``--method dmd2`` a DMD2 generator on ``--dmd_noise_levels`` (its steps are their count, n), the
   teacher guided with w as the real score.
4. On each held-out prompt and fixed noise, on the latents (decoding is the same for every sampler):
   reference = teacher, 64 Euler steps on Mochi's schedule (``linear_quadratic_schedule(64, 0.025)``,
   as MochiPipeline) with guidance 1 + w; E_teacher(n) = relative L2 of the teacher with n steps
   (on Mochi's n-step schedule, and on the student's n levels) against it; E_student(n) = the
   same for the student's n steps without guidance (n = 8 for PCM). Collapse signs, on the same latents:
   diversity = mean |a - b| between a prompt's samples for different noises, motion = mean |frame t+1 -
   frame t| (latent frames), each beside the 64-step teacher's. Timing: the denoising loop of 64 teacher
   steps with and without guidance against 8 student steps, interleaved ``--repeats`` times.

Goals (issue 5): E_student(8) <= E_teacher(8) / 2 and 8-step sampling >= 7x faster than 64-step.
Work lands in ``data/bench/distill`` (reused when present; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule  # noqa: E402

from fastvideo.data_preprocess.synthetic import make_synthetic_dataset, plan_clips  # noqa: E402
from fastvideo.models import get_adapter_class  # noqa: E402
from fastvideo.models.tiny import build_tiny  # noqa: E402
from fastvideo.sample.denoise import euler_denoise  # noqa: E402
from fastvideo.schedulers import FewStepFlowScheduler, PCMFlowScheduler  # noqa: E402
from fastvideo.training.validation import validation_prompts  # noqa: E402

FRAMES, HEIGHT, WIDTH = 25, 64, 96


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({log}):\n" + log.read_text()[-3000:])
    print(f"  {time.perf_counter() - start:.0f} s, log {log}")


def prepare(args, work: Path) -> tuple[Path, Path]:
    model = (
        build_tiny("mochi", work / "tiny-mochi", seed=0)
        if not (work / "tiny-mochi").is_dir()
        else work / "tiny-mochi"
    )
    data = work / "processed"
    if not (data / "videos2caption.json").is_file():
        clips = make_synthetic_dataset(work / "synthetic", num_videos=args.clips, num_images=0, seed=0)
        held_out = [spec.caption for spec in plan_clips(0, args.clips + args.prompts)[args.clips :]]
        (work / "held_out.txt").write_text("\n".join(held_out) + "\n")
        print(f"preprocessing {args.clips} clips; held-out prompts: {held_out}")
        run([sys.executable, "-m", "fastvideo.data_preprocess.preprocess", "--model_path", str(model),
             "--data_dir", str(clips.mochi_dir), "--output_dir", str(data), "--num_frames", str(FRAMES),
             "--height", str(HEIGHT), "--width", str(WIDTH), "--validation_prompt_txt", str(work / "held_out.txt")],
            work / "preprocess.log")  # fmt: skip
    return model, data


def train_teacher(args, work: Path, model: Path, data: Path) -> Path:
    teacher = work / "teacher"
    if not (teacher / "model_index.json").is_file():
        print(f"training the teacher for {args.teacher_steps} steps")
        run([sys.executable, "-m", "fastvideo.train", "--model_path", str(model), "--data_json_path", str(data),
             "--output_dir", str(teacher), "--max_train_steps", str(args.teacher_steps), "--train_batch_size", "4",
             "--learning_rate", "5e-4", "--lr_warmup_steps", "50", "--weight_decay", "0", "--cfg", "0.1"],
            work / "teacher.log")  # fmt: skip
    return teacher


def distill_student(args, work: Path, teacher: Path, data: Path) -> Path:
    grid = (
        grid_args(args)
        if args.method == "pcm"
        else ["--method", "dmd2", "--dmd_noise_levels", args.dmd_noise_levels]
    )
    student = work / (
        "student-"
        + "-".join([str(args.distill_steps), *grid[1::2], f"lr{args.distill_lr:g}", f"w{args.distill_cfg:g}"])
    )
    if not (student / "model_index.json").is_file():
        print(f"distilling for {args.distill_steps} steps into {student}")
        run([sys.executable, "-m", "fastvideo.distill", "--model_path", str(teacher), "--data_json_path", str(data),
             "--output_dir", str(student), "--max_train_steps", str(args.distill_steps), "--train_batch_size", "4",
             "--learning_rate", str(args.distill_lr), "--weight_decay", "0", "--use_ema", "--ema_decay", "0.95",
             "--num_euler_timesteps", "50", "--multi_phased_distill_schedule", "100000-8", *grid,
             "--distill_cfg", str(args.distill_cfg), "--cfg", "0.1", "--validation_steps", "0"],
            student.parent / f"{student.name}.log")  # fmt: skip
    return student


def grid_args(args) -> list[str]:
    if args.schedule == "shift":
        return ["--schedule", "shift", "--shift", str(args.shift)]
    return ["--schedule", "linear_quadratic", "--linear_quadratic_threshold", str(args.linear_quadratic_threshold),
            "--linear_range", str(args.linear_range)]  # fmt: skip


def relative_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).flatten(1).norm(dim=1).div(ref.flatten(1).norm(dim=1)).mean())


def diversity(per_prompt: list[list[torch.Tensor]]) -> float:
    """Mean |a - b| over every pair of a prompt's samples (different noises), averaged over prompts."""
    pairs = [
        (a - b).abs().mean() for group in per_prompt for i, a in enumerate(group) for b in group[i + 1 :]
    ]
    return float(torch.stack(pairs).mean()) if pairs else float("nan")


def motion(per_prompt: list[list[torch.Tensor]]) -> float:
    """Mean |frame t+1 - frame t| of the latents [1, C, T, H, W], over every sample."""
    return float(torch.stack([x.diff(dim=2).abs().mean() for group in per_prompt for x in group]).mean())


def mochi_sigmas(steps: int) -> torch.Tensor:
    return torch.tensor([*linear_quadratic_schedule(steps, 0.025), 0.0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=str(REPO / "data" / "bench" / "distill"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--noises", type=int, default=2)
    parser.add_argument("--teacher_steps", type=int, default=1500)
    parser.add_argument("--distill_steps", type=int, default=3000)
    parser.add_argument("--distill_lr", type=float, default=1e-4)
    parser.add_argument("--distill_cfg", type=float, default=0.0)
    parser.add_argument(
        "--schedule", default="linear_quadratic", help="the solver grid's base: linear_quadratic|shift"
    )
    parser.add_argument("--linear_quadratic_threshold", type=float, default=0.025)
    parser.add_argument("--linear_range", type=float, default=0.5)
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="pcm", choices=("pcm", "dmd2"))
    parser.add_argument("--dmd_noise_levels", default="1.0,0.757,0.522")
    args = parser.parse_args()
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    model, data = prepare(args, work)
    teacher_dir = train_teacher(args, work, model, data)
    student_dir = distill_student(args, work, teacher_dir, data)

    adapter = get_adapter_class("mochi")(teacher_dir)
    teacher = adapter.transformer_class().from_pretrained(teacher_dir / "transformer").eval()
    student = adapter.transformer_class().from_pretrained(student_dir / "transformer_ema").eval()
    if args.method == "pcm":
        scheduler, n = PCMFlowScheduler.from_pretrained(student_dir / "scheduler"), 8
    else:
        scheduler = FewStepFlowScheduler.from_pretrained(student_dir / "scheduler")
        n = len(scheduler.config.noise_levels)
    scheduler.set_timesteps(n)
    grid8 = scheduler.sigmas
    guidance = 1.0 + args.distill_cfg
    shape = (12, (FRAMES - 1) // 6 + 1, HEIGHT // 8, WIDTH // 8)
    prompts = validation_prompts(data)

    errors: dict[str, list[float]] = {
        f"teacher {n} (Mochi schedule)": [],
        f"teacher {n} (grid points)": [],
        f"student {n}": [],
    }
    samples: dict[str, list[list[torch.Tensor]]] = {"teacher 64": [], **{name: [] for name in errors}}
    for i, prompt in enumerate(prompts):
        cond = {
            "prompt_embeds": prompt["prompt_embeds"][None],
            "prompt_attention_mask": prompt["prompt_attention_mask"][None],
        }
        for k in range(args.noises):
            noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1000 * i + k))
            ref = euler_denoise(adapter, teacher, noise, mochi_sigmas(64), cond, guidance)
            runs = {
                f"teacher {n} (Mochi schedule)": euler_denoise(
                    adapter, teacher, noise, mochi_sigmas(n), cond, guidance
                ),
                f"teacher {n} (grid points)": euler_denoise(adapter, teacher, noise, grid8, cond, guidance),
                f"student {n}": euler_denoise(adapter, student, noise, grid8, cond),
            }
            for name, latents in {"teacher 64": ref, **runs}.items():
                if k == 0:
                    samples[name].append([])
                samples[name][-1].append(latents)
            for name, latents in runs.items():
                errors[name].append(relative_l2(latents, ref))
        print(f"  prompt {i + 1}/{len(prompts)}: {prompt['caption']}")

    cond = {
        "prompt_embeds": prompts[0]["prompt_embeds"][None],
        "prompt_attention_mask": prompts[0]["prompt_attention_mask"][None],
    }
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    timed = {
        "teacher 64, guidance": lambda: euler_denoise(
            adapter, teacher, noise, mochi_sigmas(64), cond, guidance
        ),
        "teacher 64, no guidance": lambda: euler_denoise(adapter, teacher, noise, mochi_sigmas(64), cond),
        f"student {n}": lambda: euler_denoise(adapter, student, noise, grid8, cond),
    }
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(
        f"\n# distill_quality, {datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"teacher {args.teacher_steps} steps, {args.method} student {args.distill_steps} steps (EMA), "
          f"w = {args.distill_cfg}, grid {' '.join(grid_args(args)) if args.method == 'pcm' else args.dmd_noise_levels}, "
          f"{n} sampling sigmas {[round(x, 3) for x in grid8.tolist()]}, "
          f"{len(prompts)} held-out prompts x {args.noises} noises, latents {list(shape)}")  # fmt: skip
    mean = {name: statistics.mean(v) for name, v in errors.items()}
    for name, value in mean.items():
        print(f"E_{name}: {value:.4f}")
    best_teacher = min(mean[f"teacher {n} (Mochi schedule)"], mean[f"teacher {n} (grid points)"])
    print(f"E_student({n}) / best E_teacher({n}) = {mean[f'student {n}'] / best_teacher:.3f} (goal <= 0.5)")
    signs = {name: (diversity(per_prompt), motion(per_prompt)) for name, per_prompt in samples.items()}
    div64, mot64 = signs["teacher 64"]
    for name, (div, mot) in signs.items():
        print(f"{name}: diversity {div:.4f} ({div / div64:.2f}x the 64-step teacher's), "
              f"motion {mot:.4f} ({mot / mot64:.2f}x)")  # fmt: skip
    median = {name: statistics.median(v) for name, v in times.items()}
    for name, value in median.items():
        print(f"sampling time {name}: {value * 1000:.1f} ms")
    for name in ("teacher 64, guidance", "teacher 64, no guidance"):
        print(f"speed-up of student {n} over {name}: {median[name] / median[f'student {n}']:.2f}x")


if __name__ == "__main__":
    main()
