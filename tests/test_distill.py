"""PCM distillation on the tiny model: SP=2 and kill -9 resume equal one process, LoRA teachers, the recipe.

Runs are real processes compared with ``distill_ref``: one process, global batch 2, EMA, a checkpoint
every step and validation at the last step, whose samples the exported pipeline must reproduce.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from runs import ADAM_EPS, assert_same_run, kill_after_checkpoint, losses, resume, run

from fastvideo.distill.pcm import PCMFlowScheduler
from fastvideo.training.validation import validation_prompts

pytestmark = pytest.mark.slow
DISTILL = "fastvideo.distill"
STEPS = 4
PCM = ["--num_euler_timesteps", 8, "--multi_phased_distill_schedule", "100-2", "--distill_cfg", 3.0,
       "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--cfg", 0.3, "--use_ema", "--checkpointing_steps", 1,
       "--validation_steps", STEPS, "--validation_step_counts", "2,4"]  # fmt: skip
BOTH = ("transformer", "transformer_ema")


@pytest.fixture(scope="module")
def distill_ref(tmp_path_factory, tiny_mochi, processed):
    out = tmp_path_factory.mktemp("distill-ref") / "run"
    run(DISTILL, out, tiny_mochi, processed, *PCM, "--max_train_steps", STEPS, "--train_batch_size", 2)
    return out


def test_sp2_distillation_equals_one_process(tmp_path, tiny_mochi, processed, distill_ref):
    out = tmp_path / "run"
    run(DISTILL, out, tiny_mochi, processed, *PCM, "--max_train_steps", STEPS, "--train_batch_size", 2,
        "--sp_size", 2, nproc=2)  # fmt: skip
    assert all(loss > 0 for loss in losses(distill_ref))
    assert_same_run(out, distill_ref, names=BOTH)


def test_killed_distillation_resumes_exactly(tmp_path, tiny_mochi, processed, distill_ref):
    out = tmp_path / "run"
    args = [*PCM, "--train_batch_size", 2]
    step = kill_after_checkpoint(DISTILL, out, tiny_mochi, processed, *args, "--max_train_steps", 100, step=2)
    assert 2 <= step < STEPS and not (out / "transformer").exists()
    resume(DISTILL, out, tiny_mochi, processed, *args, "--max_train_steps", STEPS, killed_at=step)
    assert_same_run(out, distill_ref, names=BOTH)


def test_distillation_validates_and_its_pipeline_reproduces_it(distill_ref, processed):
    for steps in (2, 4):
        videos = sorted(
            (distill_ref / "validation" / f"step-{STEPS:08d}" / f"steps-{steps}_cfg-1").glob("*.mp4")
        )
        assert len(videos) == 2
    assert_pipeline_reproduces_validation(distill_ref, processed, steps=4)


def assert_pipeline_reproduces_validation(out, processed, steps: int):
    """The output folder loads as a MochiPipeline with the PCM scheduler and samples as validation did."""
    pipe = MochiPipeline.from_pretrained(
        out, transformer=MochiTransformer3DModel.from_pretrained(out / "transformer_ema")
    )
    assert isinstance(pipe.scheduler, PCMFlowScheduler) and pipe.scheduler.config.num_euler_timesteps == 8
    prompt = validation_prompts(processed)[0]
    expected = torch.load(out / "validation" / f"step-{STEPS:08d}" / f"steps-{steps}_cfg-1" / "prompt-00.pt")
    _, _, frames, height, width = expected.shape
    got = pipe(
        prompt_embeds=prompt["prompt_embeds"][None], prompt_attention_mask=prompt["prompt_attention_mask"][None],
        guidance_scale=1.0, num_inference_steps=steps, num_frames=(frames - 1) * 6 + 1, height=height * 8,
        width=width * 8, generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_lora_distillation_teacher_is_the_base_or_the_named_model(tmp_path, tiny_mochi, processed, ref_b2):
    """Under LoRA the teacher is the base with adapters off, unless --teacher_model_path names another model
    (here the fine-tuned ref_b2), whose different velocities change the very first loss."""
    lora = ["--use_lora", "--lora_rank", 4, "--lora_alpha", 4, "--max_train_steps", 2, *PCM[:12]]
    base, named = tmp_path / "base", tmp_path / "named"
    run(DISTILL, base, tiny_mochi, processed, *lora)
    run(DISTILL, named, tiny_mochi, processed, *lora, "--teacher_model_path", ref_b2)
    assert (base / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all(loss > 0 and loss == loss for loss in losses(base) + losses(named))
    assert abs(losses(named)[0] - losses(base)[0]) > 1e-3 * losses(base)[0]


def test_distill_script_writes_a_pcm_pipeline_folder(tmp_path, tiny_mochi, processed, cli_env, repo_root):
    """scripts/distill_t2v.sh with SP=2 on 2 processes, given the index file itself as DATA_JSON_PATH (as
    the fine-tuning recipe takes it); a bad MODEL_PATH is refused with a message."""
    out = tmp_path / "distill"
    env = dict(cli_env, MODEL_PATH=str(tiny_mochi), DATA_JSON_PATH=str(processed / "videos2caption.json"),
               OUTPUT_DIR=str(out),
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
