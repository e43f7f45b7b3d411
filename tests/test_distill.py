"""PCM distillation on the tiny model: SP=2 equals one process, resume is exact, LoRA and validation run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from test_train import ADAM_EPS, exported, losses

from fastvideo.distill.pcm import PCMFlowScheduler
from fastvideo.training.validation import validation_prompts

pytestmark = pytest.mark.slow
PCM = ["--num_euler_timesteps", 8, "--multi_phased_distill_schedule", "100-2", "--distill_cfg", 3.0,
       "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--cfg", 0.3]  # fmt: skip


def distill(out, tiny_mochi, processed, *args, nproc: int = 1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launch if nproc > 1 else [sys.executable]), "-m", "fastvideo.distill", "--model_path", str(tiny_mochi),
           "--data_json_path", str(processed), "--output_dir", str(out), *map(str, PCM), *map(str, args)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(os.getcwd()))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def assert_same(got, ref):
    torch.testing.assert_close(torch.tensor(losses(got)), torch.tensor(losses(ref)), rtol=1e-5, atol=1e-7)
    ref_w, got_w = exported(ref), exported(got)
    for key in ref_w:
        torch.testing.assert_close(got_w[key], ref_w[key], rtol=1e-5, atol=1e-6, msg=key)


def test_sp2_distillation_equals_one_process(tmp_path, tiny_mochi, processed):
    one = tmp_path / "one"
    distill(one, tiny_mochi, processed, "--max_train_steps", 2, "--train_batch_size", 2, "--use_ema")
    two = tmp_path / "two"
    distill(two, tiny_mochi, processed, "--max_train_steps", 2, "--train_batch_size", 2, "--use_ema", "--sp_size", 2,
            nproc=2)  # fmt: skip
    assert all(loss > 0 for loss in losses(one))
    assert_same(two, one)


def test_distillation_resumes_exactly_and_validates(tmp_path, tiny_mochi, processed):
    args = [
        "--checkpointing_steps",
        2,
        "--use_ema",
        "--validation_steps",
        4,
        "--validation_step_counts",
        "2,4",
    ]
    full = tmp_path / "full"
    distill(full, tiny_mochi, processed, "--max_train_steps", 4, *args)
    part = tmp_path / "part"
    distill(part, tiny_mochi, processed, "--max_train_steps", 2, *args)
    distill(part, tiny_mochi, processed, "--max_train_steps", 4, *args, "--resume_from_checkpoint", "latest")
    assert losses(part) == losses(full)
    for steps in (2, 4):
        videos = sorted((full / "validation" / "step-00000004" / f"steps-{steps}_cfg-1").glob("*.mp4"))
        assert len(videos) == 2
    assert_pipeline_reproduces_validation(full, processed, steps=4)


def assert_pipeline_reproduces_validation(out, processed, steps: int):
    """The output folder loads as a MochiPipeline with the PCM scheduler and samples as validation did."""
    pipe = MochiPipeline.from_pretrained(
        out, transformer=MochiTransformer3DModel.from_pretrained(out / "transformer_ema")
    )
    assert isinstance(pipe.scheduler, PCMFlowScheduler) and pipe.scheduler.config.num_euler_timesteps == 8
    prompt = validation_prompts(processed)[0]
    expected = torch.load(out / "validation" / "step-00000004" / f"steps-{steps}_cfg-1" / "prompt-00.pt")
    _, _, frames, height, width = expected.shape
    got = pipe(
        prompt_embeds=prompt["prompt_embeds"][None], prompt_attention_mask=prompt["prompt_attention_mask"][None],
        guidance_scale=1.0, num_inference_steps=steps, num_frames=(frames - 1) * 6 + 1, height=height * 8,
        width=width * 8, generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_lora_distillation_uses_the_base_as_teacher(tmp_path, tiny_mochi, processed):
    out = tmp_path / "lora"
    distill(
        out, tiny_mochi, processed, "--max_train_steps", 2, "--use_lora", "--lora_rank", 4, "--lora_alpha", 4
    )
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all(loss > 0 and loss == loss for loss in losses(out))


def test_distill_script_writes_a_pcm_pipeline_folder(tmp_path, tiny_mochi, processed, cli_env, repo_root):
    """scripts/distill_t2v.sh with SP=2 on 2 processes; a bad MODEL_PATH is refused with a message."""
    out = tmp_path / "distill"
    env = dict(cli_env, MODEL_PATH=str(tiny_mochi), DATA_JSON_PATH=str(processed), OUTPUT_DIR=str(out),
               NUM_GPUS="2", SP_SIZE="2", MAX_TRAIN_STEPS="2", CHECKPOINTING_STEPS="2", VALIDATION_STEPS="2")  # fmt: skip
    script = [
        "bash",
        "scripts/distill_t2v.sh",
        "--validation_step_counts",
        "2",
        "--num_euler_timesteps",
        "10",
    ]
    proc = subprocess.run(script, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "+ " in proc.stdout and "fastvideo.distill" in proc.stdout
    assert len(losses(out)) == 2 and (out / "checkpoints" / "latest").exists()
    assert len(list((out / "validation" / "step-00000002" / "steps-2_cfg-1").glob("*.mp4"))) == 2
    scheduler = PCMFlowScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.num_euler_timesteps == 10
    bad = subprocess.run(["bash", "scripts/distill_t2v.sh"], cwd=repo_root, capture_output=True, text=True,
                         env=dict(env, MODEL_PATH=str(tmp_path / "missing")))  # fmt: skip
    assert bad.returncode == 2 and "not a pipeline folder" in bad.stderr
