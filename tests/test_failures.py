"""Failures end cleanly: one line for a user error, the failing rank named, no orphaned workers, one run
per output folder, and one checkpoint choice for every rank. Real recipes and real torchrun jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from runs import command, complete_steps, env, wait_until_free

from fastvideo.dataset import LatentDataset, ShapeBucketSampler

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its new parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("script", "settings", "expected"),
    [
        ("finetune_mochi.sh", {"NUM_GPUS": "abc"}, "NUM_GPUS) must be a positive whole number, got 'abc'"),
        ("finetune_mochi.sh", {"SP_SIZE": "x"}, "argument --sp_size: invalid int value: 'x'"),
        ("finetune_mochi.sh", {"NUM_GPUS": "2", "SP_SIZE": "3"}, "world size 2 is not divisible"),
        ("finetune_mochi.sh", {"DATA_JSON_PATH": "{tmp}/missing"}, "missing does not exist"),
        ("finetune_mochi_lora.sh", {"MODEL_PATH": "{tmp}"}, "is not a diffusers model folder"),
        ("distill_t2v.sh", {"DATA_JSON_PATH": "{tmp}/missing/videos2caption.json"}, "does not exist"),
        ("finetune_mochi.sh", {"NNODES": "2"}, "NNODES=2 needs NODE_RANK and MASTER_ADDR"),
        ("sample_t2v_mochi.sh", {"PROMPT_PATH": "{tmp}/prompts.txt"}, "No such file or directory"),
    ],
    ids=["num-gpus", "sp-size", "degrees", "data", "model", "distill-data", "nodes", "prompts"],
)
def test_a_user_error_in_a_recipe_is_one_line(tmp_path, tiny_mochi, processed, repo_root, script, settings,
                                              expected):  # fmt: skip
    defaults = {
        "MODEL_PATH": str(tiny_mochi),
        "DATA_JSON_PATH": str(processed),
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    variables = {k: v.format(tmp=tmp_path) for k, v in {**defaults, **settings}.items()}
    proc = subprocess.run(["bash", f"scripts/{script}"], cwd=repo_root, capture_output=True, text=True,
                          env=dict(env(), PYTHON=sys.executable, **variables), timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr[-3000:]


def test_an_error_on_one_rank_is_named_and_ends_the_job(tmp_path, tiny_mochi, processed):
    """Rank 1 alone reads an unreadable latent at step 1: it says so with its rank, and the whole job
    (rank 0 waiting in a collective) ends within 60 s with that rank's exit code."""
    data = tmp_path / "data"
    shutil.copytree(processed, data)
    dataset = LatentDataset(data)
    rank1_first = next(iter(ShapeBucketSampler(dataset, batch_size=1, dp_rank=1, dp_size=2, seed=0)))[0]
    broken = data / "latent" / dataset.records[rank1_first]["latent_path"]
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated file, as a full disk leaves it

    started = time.monotonic()
    proc = subprocess.run(command("fastvideo.train", tmp_path / "out", tiny_mochi, data, "--max_train_steps", 50,
                                  nproc=2), env=env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error (rank 1 of 2): {broken} listed in" in proc.stderr and "unreadable" in proc.stderr
    assert "error: rank 1 failed first (exit code 2)" in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"


def test_workers_die_with_their_launcher_and_a_live_run_holds_its_folder(tmp_path, tiny_mochi, processed):
    """While a 2-process run trains, a second run into its OUTPUT_DIR is refused with the holder's pid and
    host. Then kill -9 of the launcher's process group (torchrun's workers live in sessions of their
    own, out of its reach) stops the workers too: the folder is released and no checkpoint follows."""
    out = tmp_path / "out"
    args = ["--max_train_steps", 500, "--checkpointing_steps", 1]
    first = subprocess.Popen(command("fastvideo.train", out, tiny_mochi, processed, *args, nproc=2), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "checkpoints").is_dir() or not complete_steps(out):
        assert first.poll() is None and time.monotonic() < deadline, "the first run did not get going"
        time.sleep(0.05)
    holder = json.loads((out / ".fastvideo.lock").read_text())

    second = subprocess.run(command("fastvideo.train", out, tiny_mochi, processed, *args,
                                    "--resume_from_checkpoint", "latest", nproc=2),
                            env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 2
    lines = stderr_lines(second)
    assert (
        len(lines) == 1
        and f"in use by a live run: pid {holder['pid']} on host {socket.gethostname()}" in lines[0]
    )

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert wait_until_free(out, timeout_s=10) < 5
    assert not alive(holder["pid"]), "rank 0's worker outlived its launcher"
    written = complete_steps(out)
    time.sleep(2)
    assert complete_steps(out) == written, "checkpoints kept coming after the launcher was killed"


# --- rank 0 chooses the checkpoint -------------------------------------------------------------------
def _choose_on_two_ranks(rank: int, port: int, roots: list[str], results: str) -> None:
    import torch.distributed as dist
    from test_checkpoint_choice import RUN

    from fastvideo.parallel.process_group import DistInfo
    from fastvideo.training.checkpoint import CheckpointManager

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        manager = CheckpointManager(roots[rank], info, fingerprint=RUN)
        manager.root = manager.root.parent  # the fake checkpoints sit directly in each root
        chosen = str(manager.find("latest"))
        got = [None, None]
        dist.all_gather_object(got, chosen)
        if rank == 0:
            with open(results, "w") as f:
                json.dump(got, f)
    finally:
        dist.destroy_process_group()


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path):
    """On a shared filesystem that lags, rank 1 may not see the newest checkpoint yet: it must not pick
    an older one on its own."""
    from test_checkpoint_choice import fake_checkpoint

    roots = [tmp_path / "rank0-view", tmp_path / "rank1-view"]
    for step in (1, 2):
        fake_checkpoint(roots[0], step)
    fake_checkpoint(roots[1], 1)  # step 2 has not reached rank 1's view yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = tmp_path / "results.json"
    torch.multiprocessing.spawn(
        _choose_on_two_ranks, args=(port, [str(r) for r in roots], str(results)), nprocs=2
    )
    assert json.loads(results.read_text()) == [str(roots[0] / "step-00000002")] * 2
