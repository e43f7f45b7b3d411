"""Fine-tuning on the tiny model: every parallel layout equals one process; resume is exact.

Each run is a real process (``python -m fastvideo.train`` or torchrun with gloo), compared with a
single-process reference run in the same test on the same data, seed and global batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


# The pooler's key bias has an exactly-zero gradient in exact arithmetic (softmax is shift-invariant),
# so its float gradient is rounding noise that Adam would blow up to +-lr steps whose signs depend on
# summation order. A larger eps keeps such noise from moving weights, so layouts can be compared.
ADAM_EPS = "1e-3"
# Validating between steps swaps the EMA weights in and out of the sharded model: it must not leak.
EMA_VALIDATION = ["--use_ema", "--ema_decay", 0.5, "--validation_steps", 2, "--validation_sampling_steps", 2]


def train_cmd(out, tiny_mochi, processed, *args, nproc: int = 1) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*(launch if nproc > 1 else [sys.executable]), "-m", "fastvideo.train", "--model_path", str(tiny_mochi),
            "--data_json_path", str(processed), "--output_dir", str(out), "--learning_rate", "1e-3",
            "--cfg", "0.3", "--adam_eps", ADAM_EPS, *map(str, args)]  # fmt: skip


def train(out, tiny_mochi, processed, env, *args, nproc: int = 1, check: bool = True):
    cmd = train_cmd(out, tiny_mochi, processed, *args, nproc=nproc)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def losses(out) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def exported(out, name: str = "transformer") -> dict[str, torch.Tensor]:
    return load_file(out / name / "diffusion_pytorch_model.safetensors")


def assert_same_run(got, ref, rtol=1e-5):
    torch.testing.assert_close(torch.tensor(losses(got)), torch.tensor(losses(ref)), rtol=rtol, atol=1e-7)
    ref_w, got_w = exported(ref), exported(got)
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        torch.testing.assert_close(got_w[key], ref_w[key], rtol=rtol, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_mochi, processed, cli_env_module):
    """3 steps, global batch 2, in one process; EMA and a validation (with the EMA swapped in) at step 2."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(
        out,
        tiny_mochi,
        processed,
        cli_env_module,
        "--max_train_steps",
        3,
        "--train_batch_size",
        2,
        *EMA_VALIDATION,
    )
    return out


@pytest.fixture(scope="module")
def cli_env_module(repo_root):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize(
    ("nproc", "layout", "batch"),
    [
        (2, ["--sp_size", 1], 1),  # FSDP over 2 ranks, each one sample
        (2, ["--dp_replicate", 2, "--dp_shard", 1], 1),  # HSDP 2x1
        (2, ["--sp_size", 2], 2),  # one SP group of 2 ranks splitting each sample's tokens
        (4, ["--dp_replicate", 2, "--dp_shard", 1, "--sp_size", 2], 1),  # HSDP 2x1 x SP 2
    ],
    ids=["fsdp2", "hsdp2x1", "sp2", "hsdp2x1-sp2"],
)
def test_parallel_layouts_equal_one_process(
    tmp_path, tiny_mochi, processed, cli_env_module, reference, nproc, layout, batch
):
    out = tmp_path / "run"
    train(out, tiny_mochi, processed, cli_env_module, "--max_train_steps", 3, "--train_batch_size", batch, *layout,
          *EMA_VALIDATION, nproc=nproc)  # fmt: skip
    assert len(losses(out)) == 3
    assert_same_run(out, reference)
    for key, value in exported(reference, "transformer_ema").items():
        torch.testing.assert_close(
            exported(out, "transformer_ema")[key], value, rtol=1e-5, atol=1e-6, msg=key
        )


def test_compiled_checkpointed_blocks_train_like_eager(
    tmp_path, tiny_mochi, processed, cli_env_module, reference
):
    """--compile (inductor) with every block checkpointed: the same losses, weights and EMA as eager."""
    out = tmp_path / "run"
    train(out, tiny_mochi, processed, cli_env_module, "--max_train_steps", 3, "--train_batch_size", 2,
          *EMA_VALIDATION, "--compile", "--activation_checkpointing", "all")  # fmt: skip
    # Inductor may reorder float32 sums, so equal up to rounding rather than bit for bit.
    assert_same_run(out, reference, rtol=1e-4)
    for key, value in exported(reference, "transformer_ema").items():
        torch.testing.assert_close(
            exported(out, "transformer_ema")[key], value, rtol=1e-4, atol=1e-6, msg=key
        )


def test_compile_blocks_compiles_checkpointed_blocks():
    """Compiling the checkpoint wrapper itself compiles nothing (a graph break in diffusers' Mochi
    attention makes dynamo give up on the whole checkpoint); compile_blocks must yield graphs."""
    import torch._dynamo
    import torch._dynamo.utils
    from diffusers import MochiTransformer3DModel

    from fastvideo.models.tiny import TINY_MOCHI_DIT
    from fastvideo.parallel.checkpointing import resolve_policy
    from fastvideo.training.trainer import compile_blocks

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = MochiTransformer3DModel(**TINY_MOCHI_DIT)
    assert resolve_policy("all").apply(model) == list(range(TINY_MOCHI_DIT["num_layers"]))
    compile_blocks(model.transformer_blocks)
    out = model(hidden_states=torch.randn(1, 12, 2, 4, 6), encoder_hidden_states=torch.randn(1, 8, 32),
                timestep=torch.tensor([500.0]), encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool),
                return_dict=False)[0]  # fmt: skip
    out.sum().backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()


def test_export_loads_in_diffusers(reference, tiny_mochi):
    """The output folder is a whole pipeline: the trained transformer plus links to the base's parts."""
    pipe = MochiPipeline.from_pretrained(reference)
    model = pipe.transformer
    assert all(torch.equal(p, exported(reference)[n]) for n, p in model.state_dict().items())
    assert (reference / "vae").resolve() == (tiny_mochi / "vae").resolve()
    video = pipe("a red circle moving right", num_frames=7, height=32, width=32, num_inference_steps=2,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert video.shape == (1, 7, 3, 32, 32) and torch.isfinite(video).all()
    base = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters(), strict=True))


def test_metrics_and_loss_curve(reference):
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"loss", "lr", "grad_norm", "step_time"} <= r.keys()
    from PIL import Image

    with Image.open(reference / "loss_curve.png") as img:
        assert img.size[0] > 100


def test_killed_run_resumes_with_identical_losses(tmp_path, tiny_mochi, processed, cli_env_module):
    args = ["--max_train_steps", 6, "--checkpointing_steps", 1, "--checkpoints_total_limit", 2, "--use_ema"]
    full = tmp_path / "full"
    train(full, tiny_mochi, processed, cli_env_module, *args)
    assert sorted(p.name for p in (full / "checkpoints").glob("step-*")) == ["step-00000005", "step-00000006"]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(out, tiny_mochi, processed, *args),
        env=cli_env_module,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "step-00000003").is_dir():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "transformer").exists(), "the run finished before it was killed"
    train(out, tiny_mochi, processed, cli_env_module, *args, "--resume_from_checkpoint", "latest")
    assert losses(out) == losses(full)  # bitwise on CPU
    for name in ("transformer", "transformer_ema"):
        ref_w, got_w = exported(full, name), exported(out, name)
        assert all(torch.equal(got_w[k], ref_w[k]) for k in ref_w), name


def test_partial_checkpoint_is_skipped(tmp_path, tiny_mochi, processed, cli_env_module):
    out = tmp_path / "run"
    train(out, tiny_mochi, processed, cli_env_module, "--max_train_steps", 2, "--checkpointing_steps", 1)
    (out / "checkpoints" / "step-00000002" / "COMPLETE").unlink()  # as if the save never finished
    proc = train(out, tiny_mochi, processed, cli_env_module, "--max_train_steps", 3, "--checkpointing_steps", 1,
                 "--resume_from_checkpoint", "latest")  # fmt: skip
    assert (
        "skipping checkpoint" in proc.stderr
        and "resumed from" in proc.stdout
        and "step-00000001" in proc.stdout
    )


def test_nan_loss_stops_with_a_message(tmp_path, tiny_mochi, processed, cli_env_module):
    out = tmp_path / "run"
    proc = train(out, tiny_mochi, processed, cli_env_module, "--max_train_steps", 5, "--learning_rate", "1e30",
                 "--max_grad_norm", 0, "--checkpointing_steps", 1, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr and "at step" in proc.stderr and "Traceback" not in proc.stderr
    for ckpt in (out / "checkpoints").glob("step-*"):
        step = int(ckpt.name.split("-")[1])
        assert step < int(proc.stderr.split("at step ")[1].split()[0])


def test_bad_layout_is_refused_before_loading(tmp_path, tiny_mochi, processed, cli_env_module):
    proc = train(tmp_path / "run", tiny_mochi, processed, cli_env_module, "--sp_size", 3, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not divisible" in proc.stderr or "world size" in proc.stderr


def test_finetune_script_with_sp2_validates_checkpoints_exports(tmp_path, tiny_mochi, processed, cli_env_module,
                                                                repo_root):  # fmt: skip
    out = tmp_path / "run"
    env = dict(cli_env_module, PYTHON=sys.executable, MODEL_PATH=str(tiny_mochi), DATA_JSON_PATH=str(processed),
               OUTPUT_DIR=str(out), NUM_GPUS="2", SP_SIZE="2", MAX_TRAIN_STEPS="4", CHECKPOINTING_STEPS="2",
               VALIDATION_STEPS="2")  # fmt: skip
    proc = subprocess.run(["bash", "scripts/finetune_mochi.sh", "--use_ema", "--activation_checkpointing", "all"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    videos = sorted((out / "validation" / "step-00000004").glob("*.mp4"))
    assert len(videos) == 2
    import av

    with av.open(str(videos[0])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 13
    MochiTransformer3DModel.from_pretrained(out / "transformer_ema")
