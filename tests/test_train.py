"""Fine-tuning on the tiny model: every parallel layout equals one process, and kill -9 resume is exact.

Each run is a real process (``python -m fastvideo.train``, or ``python -m fastvideo.launch`` with gloo
for several), compared with a single-process reference run in the same module on the same data, seed
and global batch: per-step losses and gradient norms, exported weights and EMA weights. Validation
every 3 steps swaps the EMA into the sharded model and out again mid-run, so a leak would show.

Two references: ``ref_b2`` (global batch 2, clipping off: with Adam a gradient k times too large
changes neither losses nor weights once clipped, so the gradient norms are compared unclipped) for
the kill -9 resume runs, elastic resumes and micro-steps; ``ref_b4`` (global batch 4, clipping at
1.0) for HSDP 2x2 on 4 ranks and torch.compile.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from diffusers import MochiPipeline, MochiTransformer3DModel
from runs import (
    B2,
    B4,
    STEPS,
    TRAIN,
    assert_same_run,
    copy_run,
    exported,
    kill_after_checkpoint,
    losses,
    metrics,
    resume,
    run,
)

pytestmark = pytest.mark.slow
BOTH = ("transformer", "transformer_ema")


@pytest.fixture(scope="module")
def ref_b4(tmp_path_factory, tiny_mochi, processed):
    out = tmp_path_factory.mktemp("ref_b4") / "run"
    run(TRAIN, out, tiny_mochi, processed, *B4, "--train_batch_size", 4)
    return out


# --- kill -9 and resume, on the same or another layout ----------------------------------------------
KILLED = {  # name: (processes, flags) of a run killed once checkpoint 2 exists
    "fsdp2": (2, ["--train_batch_size", 1]),
    "sp2": (2, ["--sp_size", 2, "--train_batch_size", 2]),
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_mochi, processed):
    """Each KILLED run, killed with -9 (launcher's process group) mid-way; (folder, step it reached)."""
    runs = {}
    for name, (nproc, flags) in KILLED.items():
        out = tmp_path_factory.mktemp(f"killed-{name}") / "run"
        # 100 steps: far from done when killed; the resumes below stop at STEPS (constant LR either way).
        step = kill_after_checkpoint(TRAIN, out, tiny_mochi, processed, *B2, "--max_train_steps", 100, *flags,
                                     step=2, nproc=nproc)  # fmt: skip
        assert 2 <= step < STEPS and not (out / "transformer").exists(), "killed too late"
        runs[name] = (out, step)
    return runs


@pytest.mark.parametrize(
    ("source", "nproc", "flags"),
    [
        ("fsdp2", 2, ["--train_batch_size", 1]),  # kill -9 under FSDP over 2 ranks, same layout
        ("fsdp2", 1, ["--train_batch_size", 2]),  # elastic 2 -> 1 process
        # elastic 2 -> 4 processes, into HSDP 2x1 x SP 2 (replicas, each splitting its sample's tokens)
        ("sp2", 4, ["--dp_replicate", 2, "--dp_shard", 1, "--sp_size", 2, "--train_batch_size", 1]),
    ],
    ids=["fsdp2-to-fsdp2", "fsdp2-to-1proc", "sp2-to-hsdp2x1-sp2"],
)
def test_killed_run_resumes_exactly(tmp_path, tiny_mochi, processed, ref_b2, killed, source, nproc, flags):
    """The resumed run continues from the step the killed one reached, and equals one uninterrupted process."""
    folder, step = killed[source]
    out = copy_run(folder, tmp_path / "run")
    resume(
        TRAIN,
        out,
        tiny_mochi,
        processed,
        *B2,
        "--max_train_steps",
        STEPS,
        *flags,
        killed_at=step,
        nproc=nproc,
    )
    assert len(losses(out)) == STEPS
    assert_same_run(out, ref_b2, names=BOTH)


# --- layouts run uninterrupted ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nproc", "flags", "reference"),
    [
        # 2 micro-steps of 1 sample equal 1 step of 2, here on one process sharded over itself to offload
        (
            1,
            [
                *B2,
                "--max_train_steps",
                STEPS,
                "--train_batch_size",
                1,
                "--gradient_accumulation_steps",
                2,
                "--cpu_offload",
            ],
            "ref_b2",
        ),  # fmt: skip
        # HSDP 2x2 on 4 ranks (without validation, which 4 ranks on 2 cores make slow; the resumes validate)
        (
            4,
            ["--dp_replicate", 2, "--dp_shard", 2, "--train_batch_size", 1, *B4, "--validation_steps", 0],
            "ref_b4",
        ),
    ],
    ids=["accumulate-2x1-cpu-offload", "hsdp2x2"],
)
def test_layout_equals_one_process(tmp_path, tiny_mochi, processed, request, nproc, flags, reference):
    out = tmp_path / "run"
    proc = run(TRAIN, out, tiny_mochi, processed, *flags, nproc=nproc)
    assert_same_run(out, request.getfixturevalue(reference), names=BOTH)
    if "--cpu_offload" in flags:  # one process, still sharded (over itself) so FSDP2 can offload
        assert "FSDP2 with CPU offload; global batch 2 (1 x 1 data-parallel x 2 micro-steps)" in proc.stdout


def test_compiled_checkpointed_blocks_train_like_eager(tmp_path, tiny_mochi, processed, ref_b4):
    """--compile (inductor) with every block checkpointed: the same losses, weights and EMA as eager."""
    out = tmp_path / "run"
    no_validation = ["--validation_steps", 0]  # compiling sampling graphs too would double the time
    run(TRAIN, out, tiny_mochi, processed, *B4, *no_validation, "--train_batch_size", 4, "--compile",
        "--activation_checkpointing", "all")  # fmt: skip
    # Inductor may reorder float32 sums, so equal up to rounding rather than bit for bit.
    assert_same_run(out, ref_b4, names=BOTH, rtol=1e-4)


def test_compile_blocks_compiles_checkpointed_blocks():
    """Compiling the checkpoint wrapper itself compiles nothing (a graph break in diffusers' Mochi
    attention makes dynamo give up on the whole checkpoint); compile_blocks must yield graphs.
    Dynamo's graph capture is what is tested, so the cheap eager backend stands in for inductor."""
    import torch._dynamo
    import torch._dynamo.utils

    from fastvideo.models.tiny import TINY_MOCHI_DIT
    from fastvideo.parallel.activation_checkpointing import resolve_policy
    from fastvideo.training.trainer import compile_blocks

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = MochiTransformer3DModel(**TINY_MOCHI_DIT)
    assert resolve_policy("all").apply(model) == list(range(TINY_MOCHI_DIT["num_layers"]))
    compile_blocks(model.transformer_blocks, backend="eager")
    out = model(hidden_states=torch.randn(1, 12, 2, 4, 6), encoder_hidden_states=torch.randn(1, 8, 32),
                timestep=torch.tensor([500.0]), encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool),
                return_dict=False)[0]  # fmt: skip
    out.sum().backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    torch._dynamo.reset()


# --- outputs ----------------------------------------------------------------------------------------
def test_export_loads_in_diffusers(ref_b4, tiny_mochi):
    """The output folder is a whole pipeline: the trained transformer plus links to the base's parts."""
    pipe = MochiPipeline.from_pretrained(ref_b4)
    model = pipe.transformer
    assert all(torch.equal(p, exported(ref_b4)[n]) for n, p in model.state_dict().items())
    assert (ref_b4 / "vae").resolve() == (tiny_mochi / "vae").resolve()
    video = pipe("a red circle moving right", num_frames=7, height=32, width=32, num_inference_steps=2,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert video.shape == (1, 7, 3, 32, 32) and torch.isfinite(video).all()
    base = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters(), strict=True))


def test_metrics_and_loss_curve(ref_b4):
    records = [json.loads(line) for line in (ref_b4 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"loss", "lr", "grad_norm", "step_time"} <= r.keys()
    from PIL import Image

    with Image.open(ref_b4 / "loss_curve.png") as img:
        assert img.size[0] > 100


def test_bf16_weights_validate_on_one_process_and_keep_an_fp32_ema(tmp_path, tiny_mochi, processed):
    """bf16 master weights on one process (no FSDP to cast them): training and validation run under
    autocast, and the EMA shadows stay fp32 (a bf16 EMA at decay 0.999 drops most updates)."""
    out = tmp_path / "run"
    run(TRAIN, out, tiny_mochi, processed, "--max_train_steps", 2, "--mixed_precision", "bf16",
        "--master_weight_type", "bf16", "--use_ema", "--ema_decay", 0.999, "--validation_steps", 2,
        "--validation_sampling_steps", 2)  # fmt: skip
    assert len(list((out / "validation" / "step-00000002").glob("prompt-*.mp4"))) == 2
    meta = (
        dcp.FileSystemReader(str(out / "checkpoints" / "step-00000002")).read_metadata().state_dict_metadata
    )
    ema = {k: v.properties.dtype for k, v in meta.items() if k.startswith("ema.")}
    model = {k: v.properties.dtype for k, v in meta.items() if k.startswith("model.")}
    assert ema and set(ema.values()) == {torch.float32}
    assert set(model.values()) == {torch.bfloat16}


def test_nan_loss_stops_with_a_message(tmp_path, tiny_mochi, processed):
    out = tmp_path / "run"
    proc = run(TRAIN, out, tiny_mochi, processed, "--max_train_steps", 5, "--learning_rate", "1e30",
               "--max_grad_norm", 0, "--checkpointing_steps", 1, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr and "at step" in proc.stderr and "Traceback" not in proc.stderr
    for ckpt in (out / "checkpoints").glob("step-*"):
        step = int(ckpt.name.split("-")[1])
        assert step < int(proc.stderr.split("at step ")[1].split()[0])


def test_finetune_script_with_sp2_validates_checkpoints_exports(tmp_path, tiny_mochi, processed, cli_env,
                                                                repo_root):  # fmt: skip
    """The recipe on 2 processes (SP=2), given the index file itself as DATA_JSON_PATH."""
    out = tmp_path / "run"
    env = dict(cli_env, PYTHON=sys.executable, MODEL_PATH=str(tiny_mochi), OUTPUT_DIR=str(out), NUM_GPUS="2",
               DATA_JSON_PATH=str(processed / "videos2caption.json"), SP_SIZE="2", MAX_TRAIN_STEPS="4",
               CHECKPOINTING_STEPS="2", VALIDATION_STEPS="2")  # fmt: skip
    proc = subprocess.run(["bash", "scripts/finetune_mochi.sh", "--use_ema", "--activation_checkpointing", "all"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "+ " in proc.stdout and "fastvideo.launch" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    videos = sorted((out / "validation" / "step-00000004").glob("*.mp4"))
    assert len(videos) == 2
    import av

    with av.open(str(videos[0])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 13
    MochiTransformer3DModel.from_pretrained(out / "transformer_ema")
    assert len(metrics(out)) == 4
