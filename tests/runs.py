"""Launching real fine-tuning and distillation runs from tests, killing them, and comparing their results.

Every run is a real process: ``python -m fastvideo.train`` (or ``fastvideo.distill``) for one process,
``python -m fastvideo.launch`` (torchrun plus preflight, as the recipes use) for several.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastvideo.lock import FolderInUse, FolderLock

REPO = Path(__file__).resolve().parents[1]
# The pooler's key bias has an exactly-zero gradient in exact arithmetic (softmax is shift-invariant),
# so its float gradient is rounding noise that Adam would blow up to +-lr steps whose signs depend on
# summation order. A larger eps keeps such noise from moving weights, so layouts can be compared.
ADAM_EPS = "1e-3"

TRAIN = "fastvideo.train"
STEPS = 6
COMMON = ["--learning_rate", "1e-3", "--cfg", 0.3, "--adam_eps", ADAM_EPS, "--use_ema", "--ema_decay", 0.5,
          "--validation_steps", 3, "--validation_sampling_steps", 2]  # fmt: skip
B2 = [*COMMON, "--max_grad_norm", 0, "--checkpointing_steps", 1]  # global batch 2, clipping off, checkpoints
B4 = [*COMMON, "--max_train_steps", 3]  # global batch 4, clipping at 1.0, 3 steps


def env() -> dict[str, str]:
    """Subprocess environment: this checkout importable, one thread per process (2-core CI)."""
    return dict(
        os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )


def command(entry: str, out: Path, model: Path, data: Path, *args, nproc: int = 1) -> list[str]:
    launch = [sys.executable, "-m", "fastvideo.launch", "--standalone", "--nproc_per_node", str(nproc)]
    return [*(launch if nproc > 1 else [sys.executable]), "-m", entry, "--model_path", str(model),
            "--data_json_path", str(data), "--output_dir", str(out), *map(str, args)]  # fmt: skip


def run(entry: str, out: Path, model: Path, data: Path, *args, nproc: int = 1, check: bool = True):
    proc = subprocess.run(
        command(entry, out, model, data, *args, nproc=nproc),
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def wait_until_free(folder: Path, timeout_s: float = 30.0) -> float:
    """Seconds until no live process holds ``folder``'s run lock (its workers are all gone)."""
    start = time.monotonic()
    while True:
        try:
            FolderLock(folder).acquire().release()
            return time.monotonic() - start
        except FolderInUse:
            assert time.monotonic() - start < timeout_s, f"{folder} still held {timeout_s} s after the kill"
            time.sleep(0.05)


def complete_steps(out: Path) -> list[int]:
    """Steps of the whole checkpoints, counting a ``step-N.tmp`` whose save was killed after its marker
    (between its renames): the next resume finishes it."""
    found = (re.fullmatch(r"step-(\d{8})(\.tmp)?", p.name) for p in (out / "checkpoints").glob("step-*"))
    return sorted(
        {int(m.group(1)) for m in found if m and (out / "checkpoints" / m.group(0) / "COMPLETE").is_file()}
    )


def kill_after_checkpoint(
    entry: str, out: Path, model: Path, data: Path, *args, step: int, nproc: int = 1
) -> int:
    """Start a run, ``kill -9`` its launcher's process group once checkpoint ``step`` exists, and
    return the newest complete checkpoint's step once every worker is gone.

    torchrun puts its workers in sessions of their own, so the kill reaches the launcher only: the
    workers must notice and stop by themselves (``fastvideo.parallel.process_group.watch_launcher``).
    """
    proc = subprocess.Popen(command(entry, out, model, data, *args, nproc=nproc), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    marker = out / "checkpoints" / f"step-{step:08d}" / "COMPLETE"
    deadline = time.monotonic() + 600
    while not marker.is_file():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before checkpoint {step}"
        assert time.monotonic() < deadline, f"no checkpoint {step} after 600 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until_free(out)
    return complete_steps(out)[-1]


def resume(entry: str, out: Path, model: Path, data: Path, *args, killed_at: int, nproc: int = 1):
    """Resume a killed run and check it resumed from the step the killed run reached."""
    proc = run(entry, out, model, data, *args, "--resume_from_checkpoint", "latest", nproc=nproc)
    expected = f"resumed from {out / 'checkpoints' / f'step-{killed_at:08d}'} at step {killed_at}"
    assert expected in proc.stdout, proc.stdout[-2000:]
    return proc


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def metrics(out: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return metrics(out, "loss")


def exported(out: Path, name: str = "transformer") -> dict[str, torch.Tensor]:
    folder = out / name
    file = folder / (
        "pytorch_lora_weights.safetensors"
        if name.startswith("lora")
        else "diffusion_pytorch_model.safetensors"
    )
    return load_file(file)


def assert_same_run(
    got: Path, ref: Path, names=("transformer",), rtol: float = 1e-5, keys=("loss", "grad_norm")
) -> None:
    """Per-step ``keys`` of metrics.jsonl (losses and gradient norms; a step without one logs null), then the
    exported weights, equal the reference run's."""
    for key in keys:
        values = [
            torch.tensor([math.nan if v is None else v for v in metrics(out, key)]) for out in (got, ref)
        ]
        torch.testing.assert_close(*values, rtol=rtol, atol=1e-7, equal_nan=True, msg=key)
    for name in names:
        ref_w, got_w = exported(ref, name), exported(got, name)
        assert ref_w.keys() == got_w.keys() and ref_w, name
        for key in ref_w:
            torch.testing.assert_close(got_w[key], ref_w[key], rtol=rtol, atol=1e-6, msg=f"{name}: {key}")
