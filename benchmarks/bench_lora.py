"""Full fine-tuning against LoRA on the tiny model: per-rank memory and step time, side by side.

    python benchmarks/bench_lora.py [--nproc 2 --steps 20 --lora_rank 16 --repeats 2]

Runs ``fastvideo.train`` through torchrun (gloo on CPU) on the quickstart's ``data/processed``,
alternating full and LoRA runs ``--repeats`` times. Reports rank 0's bytes of parameters,
gradients and optimizer state (``memory.json``) and the median ``step_time`` of steps 3 onward
(``metrics.jsonl``), with LoRA/full ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args, out: Path, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "fastvideo.train", "--model_path", args.model_path, "--data_json_path", args.data,
           "--output_dir", str(out), "--max_train_steps", str(args.steps), *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    memory = json.loads((out / "memory.json").read_text())
    steps = [json.loads(line)["step_time"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return memory, statistics.median(steps[2:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/processed")
    parser.add_argument("--model_path", default="data/tiny-mochi")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    lora = ["--use_lora", "--lora_rank", str(args.lora_rank), "--lora_alpha", str(args.lora_rank)]
    # On CPU the compute is fp32, so the "auto" base dtype is fp32; bf16 is what a GPU run gets.
    variants = {"full": [], "lora": lora, "lora-bf16-base": [*lora, "--lora_base_dtype", "bf16"]}
    results: dict[str, list] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, extra in variants.items():
                results[name].append(run(args, Path(tmp) / f"{name}-{i}", extra))
    print(
        f"# full vs LoRA (rank {args.lora_rank}, q/k/v/out of both streams), tiny Mochi, {args.nproc} ranks (gloo)"
    )
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, {datetime.date.today()}, {args.steps} steps x {args.repeats}"
    )
    keys = ("parameters", "gradients", "optimizer_state", "total")
    print(f"{'':15}" + "".join(f"{k:>17}" for k in keys) + f"{'step ms':>10}")
    summary = {}
    for name, runs in results.items():
        memory = runs[0][0]
        step = statistics.median(r[1] for r in runs)
        summary[name] = (memory, step)
        print(f"{name:15}" + "".join(f"{memory[k]:>17,d}" for k in keys) + f"{step * 1e3:>10.2f}")
    mf, sf = summary["full"]
    for name in ("lora", "lora-bf16-base"):
        ml, sl = summary[name]
        ratios = "".join(f"{ml[k] / mf[k]:>17.3f}" for k in keys)
        print(f"{name + '/full':15}{ratios}{sl / sf:>10.3f}")


if __name__ == "__main__":
    main()
