"""Teacher against its few-step students, one table per family: train a tiny teacher, distill it two ways, compare.

    python benchmarks/distill_quality.py                  # Mochi and Wan, as docs/benchmarks.md (every stage cached)
    python benchmarks/distill_quality.py --families wan --dmd_steps 2000 --dmd_args "--critic_learning_rate 3e-4"

Per family (``--families``), in ``--work``/<family> (each stage is reused when its folder exists;
``--fresh`` starts over):

1. Data: the family's tiny model and ``--clips`` synthetic clips (25 frames, 64x96); ``--prompts``
   shape/colour/direction combinations that no training clip shows are held out and encoded as the
   validation prompts.
2. Teacher: ``fastvideo.train`` on one process, with caption dropout ``--teacher_dropout`` so that
   classifier-free guidance has an unconditional model to push against.
3. Students, both with guidance w = ``--distill_cfg`` distilled in and sampled without guidance:
   PCM (``fastvideo.distill``, one phase per step of 8, ``--pcm_steps``) and DMD2 (``--method dmd2`` on
   the 4 noise levels 1, .75, .5, .25, ``--dmd_steps``; the teacher guided with w is its real score);
   ``--pcm_args`` / ``--dmd_args`` add flags (the student's folder name carries their digest). Each
   family's defaults are in ``DEFAULTS``.
4. Rows, on each held-out prompt x ``--noises`` fixed noises: the teacher at 64 steps (the reference;
   and without guidance, to show what guidance adds) and at 8 and 4 steps on its family's schedule, a
   uniform one and the PCM student's points, each with guidance 1 + w; the PCM student at 8 and 4
   steps; the DMD2 student at 4, 2 and 1 (Euler between its levels, as its exported scheduler) and at
   4 and 2 with fresh noise at each level (FastVideo's DMD sampler).
5. Columns: E = mean relative L2 of the latents against the 64-step teacher's; properties: colour,
   kind of shape and direction ``describe_clip`` reads back from the decoded mp4, of those the prompts
   name; diversity = mean |a - b| between a prompt's samples for different noises, and motion = mean
   |latent frame t+1 - frame t|, each also as a ratio to the 64-step teacher's; time = median
   denoising loop of one sample (``--repeats``, rows interleaved).
6. A picture per family (``assets/distill-<family>.png``): the first, middle and last frame of
   held-out prompt 0 at noise 0, one line per row.

Goals (issue 16): PCM 8 without guidance at most half the error of the best guided 8-step teacher
schedule, reading back at least the properties of the 8-step teacher; DMD2 4 reading back at least
the 64-step teacher's properties less one per prompt set, with diversity >= 0.8 of the teacher's.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastvideo.data_preprocess.synthetic import (  # noqa: E402
    describe_clip,
    make_synthetic_dataset,
    matching_properties,
    plan_clips,
)
from fastvideo.dataset.layout import load_null_condition  # noqa: E402
from fastvideo.media.video import write_video  # noqa: E402
from fastvideo.models import get_adapter_class  # noqa: E402
from fastvideo.models.tiny import build_tiny  # noqa: E402
from fastvideo.sample.denoise import euler_denoise  # noqa: E402
from fastvideo.schedulers import FewStepFlowScheduler, PCMFlowScheduler  # noqa: E402
from fastvideo.training.collapse import measure  # noqa: E402
from fastvideo.training.validation import validation_prompts  # noqa: E402

FRAMES, HEIGHT, WIDTH = 25, 64, 96
DMD_LEVELS = "1.0,0.75,0.5,0.25"
# Per family, what docs/benchmarks.md's tables were made with (a flag given on the command line wins).
DEFAULTS = {
    "mochi": {
        "teacher_steps": 1500, "pcm_steps": 3000, "dmd_steps": 2000,
        # MochiPipeline's own 8-step points (linear-quadratic 0.025, half linear), where its teacher is best
        "pcm_args": "--schedule linear_quadratic --linear_quadratic_threshold 0.025 --linear_range 0.5 "
                    "--learning_rate 2e-4",
    },
    "wan": {"teacher_steps": 3000, "pcm_steps": 2000, "dmd_steps": 600, "pcm_args": ""},
}  # fmt: skip


@dataclass
class Row:
    name: str
    model: str  # teacher | pcm | dmd2
    sigmas: torch.Tensor
    guidance: float
    fresh_noise: bool = (
        False  # re-noise each step's clean prediction with new noise (FastVideo's DMD sampler)
    )


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({log}):\n" + log.read_text()[-3000:])
    print(f"  {time.perf_counter() - start:.0f} s, log {log}")


def prepare(args, family: str, work: Path) -> tuple[Path, Path]:
    model = work / f"tiny-{family}"
    if not (model / "model_index.json").is_file():
        build_tiny(family, model, seed=0)
    data = work / "processed"
    if not (data / "videos2caption.json").is_file():
        clips = make_synthetic_dataset(work / "synthetic", num_videos=args.clips, num_images=0, seed=0)
        held_out = [spec.caption for spec in plan_clips(0, args.clips + args.prompts)[args.clips :]]
        (work / "held_out.txt").write_text("\n".join(held_out) + "\n")
        print(f"preprocessing {args.clips} clips; held-out prompts: {held_out}")
        run([sys.executable, "-m", "fastvideo.data_preprocess.preprocess", "--model_type", family,
             "--model_path", str(model),
             "--data_dir", str(clips.mochi_dir), "--output_dir", str(data), "--num_frames", str(FRAMES),
             "--height", str(HEIGHT), "--width", str(WIDTH), "--validation_prompt_txt", str(work / "held_out.txt")],
            work / "preprocess.log")  # fmt: skip
    return model, data


def train_teacher(args, family: str, work: Path, model: Path, data: Path) -> Path:
    steps = setting(args, family, "teacher_steps")
    teacher = work / f"teacher-{steps}-drop{args.teacher_dropout:g}"
    if not (teacher / "model_index.json").is_file():
        print(f"training the {family} teacher for {steps} steps (caption dropout {args.teacher_dropout:g})")
        run([sys.executable, "-m", "fastvideo.train", "--model_type", family, "--model_path", str(model),
             "--data_json_path", str(data),
             "--output_dir", str(teacher), "--max_train_steps", str(steps), "--train_batch_size", "4",
             "--learning_rate", "5e-4", "--lr_warmup_steps", "50", "--weight_decay", "0",
             "--cfg", str(args.teacher_dropout)],
            teacher.parent / f"{teacher.name}.log")  # fmt: skip
    return teacher


def distill(args, family: str, method: str, teacher: Path, data: Path) -> Path:
    steps = setting(args, family, "pcm_steps" if method == "pcm" else "dmd_steps")
    extra = (
        ["--multi_phased_distill_schedule", "100000-8", "--num_euler_timesteps", "50"]
        if method == "pcm"
        else ["--dmd_noise_levels", DMD_LEVELS]
    )
    more = shlex.split(setting(args, family, "pcm_args") if method == "pcm" else args.dmd_args)
    extra += more  # the folder's name carries a digest of them, so each setting keeps its own student
    tag = "-" + hashlib.sha256(" ".join(more).encode()).hexdigest()[:8] if more else ""
    student = teacher.parent / f"{method}-{steps}-w{args.distill_cfg:g}{tag}-from-{teacher.name}"
    if not (student / "model_index.json").is_file():
        print(f"distilling ({method}) for {steps} steps into {student}")
        run([sys.executable, "-m", "fastvideo.distill", "--model_type", family, "--method", method,
             "--model_path", str(teacher),
             "--data_json_path", str(data), "--output_dir", str(student), "--max_train_steps", str(steps),
             "--train_batch_size", "4", "--learning_rate", str(args.distill_lr), "--weight_decay", "0",
             "--use_ema", "--ema_decay", "0.95", "--distill_cfg", str(args.distill_cfg), "--cfg", "0.1",
             "--validation_steps", "0", *extra],
            student.parent / f"{student.name}.log")  # fmt: skip
    return student


def setting(args, family: str, name: str):
    value = getattr(args, name)
    return DEFAULTS.get(family, {}).get(name, "") if value is None else value


def rows_for(adapter, pcm: PCMFlowScheduler, dmd: FewStepFlowScheduler, guidance: float) -> list[Row]:
    rows = [
        Row("teacher 64", "teacher", adapter.default_sigmas(64), guidance),
        Row("teacher 64, no guidance", "teacher", adapter.default_sigmas(64), 1.0),
    ]
    for n in (8, 4):
        rows += [
            Row(f"teacher {n}, family schedule", "teacher", adapter.default_sigmas(n), guidance),
            Row(f"teacher {n}, uniform", "teacher", torch.linspace(1.0, 0.0, n + 1), guidance),
            Row(f"teacher {n}, PCM points", "teacher", pcm.sampling_sigmas(n), guidance),
        ]
    rows += [Row(f"PCM {n}", "pcm", pcm.sampling_sigmas(n), 1.0) for n in (8, 4)]
    rows += [Row(f"DMD2 {n}", "dmd2", dmd.sampling_sigmas(n), 1.0) for n in (4, 2, 1)]
    rows += [Row(f"DMD2 {n}, fresh noise", "dmd2", dmd.sampling_sigmas(n), 1.0, True) for n in (4, 2)]
    return rows


@torch.no_grad()
def fresh_noise_denoise(adapter, model, noise, sigmas, cond, seed: int) -> torch.Tensor:
    """FastVideo's DMD sampling: at each level predict clean latents, then noise them to the next level with new
    noise (drawn from a generator seeded with ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    x = noise
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        clean = x - s * adapter.predict_velocity(model, x, s.expand(x.shape[0]), cond).float()
        x = (1 - s_next) * clean + s_next * torch.randn(x.shape, generator=generator)
    return x


def relative_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).flatten(1).norm(dim=1).div(ref.flatten(1).norm(dim=1)).mean())


def picture(videos: dict[str, torch.Tensor], path: Path) -> None:
    """First, middle and last frame of each row's video ([3, F, H, W] in [-1, 1]), one labelled line per row."""
    from PIL import Image, ImageDraw

    lines = []
    for name, video in videos.items():
        frames = video[:, [0, video.shape[1] // 2, -1]]
        strip = ((frames.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        label = Image.new("RGB", (170, strip.shape[1]), "white")
        ImageDraw.Draw(label).text((4, strip.shape[1] // 2 - 6), name, fill="black")
        lines.append(np.concatenate([np.asarray(label), *strip], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(lines, axis=0))


def evaluate(args, family: str, work: Path, teacher_dir: Path, pcm_dir: Path, dmd_dir: Path) -> None:
    adapter = get_adapter_class(family)(teacher_dir)
    load = adapter.transformer_class().from_pretrained
    models = {
        "teacher": load(teacher_dir / "transformer").eval(),
        "pcm": load(pcm_dir / "transformer_ema").eval(),
        "dmd2": load(dmd_dir / "transformer_ema").eval(),
    }
    pcm = PCMFlowScheduler.from_pretrained(pcm_dir / "scheduler")
    dmd = FewStepFlowScheduler.from_pretrained(dmd_dir / "scheduler")
    rows = rows_for(adapter, pcm, dmd, 1.0 + args.distill_cfg)
    data = work / "processed"
    null = load_null_condition(data)
    channels = models["teacher"].config.in_channels
    shape = adapter.rules.latent_shape(FRAMES, HEIGHT, WIDTH, channels)
    prompts = validation_prompts(data)
    vae = adapter.load_vae()
    out = work / "samples"

    def sample(row: Row, cond: dict, noise: torch.Tensor, seed: int) -> torch.Tensor:
        if row.fresh_noise:
            return fresh_noise_denoise(adapter, models[row.model], noise, row.sigmas, cond, seed + 10**6)
        negative = adapter.null_condition(cond, null) if row.guidance > 1 else None
        return euler_denoise(adapter, models[row.model], noise, row.sigmas, cond, row.guidance, negative)

    latents: dict[str, list[list[torch.Tensor]]] = {row.name: [] for row in rows}
    shown = {row.name: 0 for row in rows}
    asked = 0
    videos: dict[str, torch.Tensor] = {}
    for i, prompt in enumerate(prompts):
        cond = {k: v[None] for k, v in prompt.items() if k != "caption"}
        for row in rows:
            latents[row.name].append([])
        for k in range(args.noises):
            noise = adapter.initial_noise((1, *shape), torch.Generator().manual_seed(1000 * i + k))
            for row in rows:
                x = sample(row, cond, noise, 1000 * i + k)
                latents[row.name][-1].append(x)
                video = adapter.decode_latents(vae, x)[0]
                path = out / row.name.replace(" ", "_").replace(",", "") / f"prompt-{i:02d}-noise-{k}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_video(path, video, fps=10)
                hits, named = matching_properties(
                    prompt["caption"], describe_clip(iio.imread(path, plugin="pyav"))
                )
                shown[row.name] += hits
                if i == 0 and k == 0:
                    videos[row.name] = video
            asked += named
        print(f"  prompt {i + 1}/{len(prompts)}: {prompt['caption']}")
    picture(videos, REPO / "assets" / f"distill-{family}.png")

    cond = {k: v[None] for k, v in prompts[0].items() if k != "caption"}
    noise = adapter.initial_noise((1, *shape), torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for _ in range(args.repeats):
        for row in rows:
            start = time.perf_counter()
            sample(row, cond, noise, 0)
            times[row.name].append(time.perf_counter() - start)

    reference = latents["teacher 64"]
    # The collapse guards' measures: per prompt, then averaged (every prompt has --noises samples).
    signs = {name: measure([p["caption"] for p in prompts], samples) for name, samples in latents.items()}
    div64, mot64 = signs["teacher 64"]["diversity"], signs["teacher 64"]["motion"]
    print(
        f"\n## {family}: {datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"teacher {teacher_dir.name}; PCM {pcm_dir.name}; DMD2 {dmd_dir.name} (levels {DMD_LEVELS}); "
          f"{len(prompts)} held-out prompts x {args.noises} noises; latents {list(shape)}; guided rows at "
          f"{1 + args.distill_cfg:g}")  # fmt: skip
    print(
        "| row | steps' sigmas | E vs teacher 64 | properties | diversity (x teacher 64) | motion (x teacher 64) | time ms |"
    )
    print("|---|---|---|---|---|---|---|")
    errors = {}
    for row in rows:
        errors[row.name] = statistics.mean(
            relative_l2(x, ref)
            for group, ref_group in zip(latents[row.name], reference, strict=True)
            for x, ref in zip(group, ref_group, strict=True)
        )
        div, mot = signs[row.name]["diversity"], signs[row.name]["motion"]
        sigmas = " ".join(f"{s:.3g}" for s in row.sigmas.tolist()) if len(row.sigmas) <= 9 else "the family's"
        print(f"| {row.name} | {sigmas} | {errors[row.name]:.4f} | {shown[row.name]} of {asked} | "
              f"{div:.4f} ({div / div64:.2f}) | {mot:.4f} ({mot / mot64:.2f}) | "
              f"{statistics.median(times[row.name]) * 1000:.1f} |")  # fmt: skip
    best8 = min(v for name, v in errors.items() if name.startswith("teacher 8"))
    print(f"E(PCM 8) / best E(teacher 8) = {errors['PCM 8'] / best8:.3f} (goal <= 0.5); "
          f"properties PCM 8 {shown['PCM 8']} vs best teacher 8 "
          f"{max(v for name, v in shown.items() if name.startswith('teacher 8'))}")  # fmt: skip
    print(
        f"DMD2 4: properties {shown['DMD2 4']} vs teacher 64 {shown['teacher 64']} (goal >= "
        f"{shown['teacher 64'] - 1}), diversity {signs['DMD2 4']['diversity'] / div64:.2f}x (goal >= 0.8)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="mochi,wan")
    parser.add_argument("--work", default=str(REPO / "data" / "bench" / "distill"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--noises", type=int, default=2)
    parser.add_argument("--teacher_steps", type=int, help="default: Mochi 1500, Wan 3000")
    parser.add_argument("--teacher_dropout", type=float, default=0.3)
    parser.add_argument("--pcm_steps", type=int, help="default: Mochi 3000, Wan 2000")
    parser.add_argument("--dmd_steps", type=int, help="default: Mochi 2000, Wan 600")
    parser.add_argument("--distill_lr", type=float, default=1e-4)
    parser.add_argument("--distill_cfg", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pcm_args", help="more fastvideo.distill flags for the PCM student (see DEFAULTS)")
    parser.add_argument("--dmd_args", default="", help="more fastvideo.distill flags for the DMD2 student")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for family in args.families.split(","):
        work = Path(args.work) / family
        if args.fresh:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        model, data = prepare(args, family, work)
        teacher = train_teacher(args, family, work, model, data)
        pcm = distill(args, family, "pcm", teacher, data)
        dmd = distill(args, family, "dmd2", teacher, data)
        evaluate(args, family, work, teacher, pcm, dmd)


if __name__ == "__main__":
    main()
