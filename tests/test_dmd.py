"""DMD2 distillation (``--method dmd2``) on the tiny Mochi and Wan: the generator, the frozen teacher as
the real score and the trainable critic as the fake score.

Runs are real processes compared with ``dmd_ref``, one process with global batch 2, EMA, a checkpoint
every step, the generator stepping every 2nd step. What must hold: SP=2 equals one process in every
role (generator losses and gradient norms, the critic's losses and gradient norms, exported weights and
EMA); a run killed with ``kill -9`` resumes exactly (so both trained roles and both optimizers were
restored); the exported pipeline samples through diffusers in the generator's steps what validation
sampled.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import MochiPipeline, WanPipeline
from runs import ADAM_EPS, assert_same_run, kill_after_checkpoint, metrics, resume, run

from fastvideo.schedulers import FewStepFlowScheduler
from fastvideo.training.validation import validation_prompts

pytestmark = pytest.mark.slow
DISTILL = "fastvideo.distill"
STEPS = 4
DMD = ["--method", "dmd2", "--generator_update_interval", 2, "--distill_cfg", 3.0, "--learning_rate", "1e-3",
       "--adam_eps", ADAM_EPS, "--use_ema", "--checkpointing_steps", 1, "--validation_steps", STEPS,
       "--validation_step_counts", "2,3"]  # fmt: skip
BOTH = ("transformer", "transformer_ema")
ROLES = ("loss", "grad_norm", "critic_loss", "critic_grad_norm")
PIPELINES = {"mochi": MochiPipeline, "wan": WanPipeline}


@pytest.fixture(scope="module", params=["mochi", "wan"])
def family(request):
    """(model type, tiny model, its processed data, the one-process reference run)."""
    name = request.param
    model = request.getfixturevalue(f"tiny_{name}")
    data = request.getfixturevalue("processed" if name == "mochi" else f"processed_{name}")
    out = request.getfixturevalue("tmp_path_factory").mktemp(f"dmd-{name}") / "run"
    run(
        DISTILL,
        out,
        model,
        data,
        "--model_type",
        name,
        *DMD,
        "--max_train_steps",
        STEPS,
        "--train_batch_size",
        2,
    )
    return name, model, data, out


def test_sp2_dmd_equals_one_process(tmp_path, family):
    name, model, data, ref = family
    out = tmp_path / "run"
    run(DISTILL, out, model, data, "--model_type", name, *DMD, "--max_train_steps", STEPS, "--train_batch_size", 2,
        "--sp_size", 2, nproc=2)  # fmt: skip
    generator_steps = [v for v in metrics(ref, "loss") if v is not None]
    assert len(generator_steps) == STEPS // 2 and all(v > 0 for v in generator_steps)
    assert all(v > 0 for v in metrics(ref, "critic_loss"))
    assert_same_run(out, ref, names=BOTH, keys=ROLES)


@pytest.mark.parametrize("family", ["mochi"], indirect=True)  # the resume path knows no family
def test_killed_dmd_resumes_exactly(tmp_path, family):
    """Killed after its checkpoint at step 2, resumed: the critic's later losses and the generator's update
    at step 3 equal the uninterrupted run's, so every role and optimizer came back."""
    name, model, data, ref = family
    out = tmp_path / "run"
    args = ["--model_type", name, *DMD, "--train_batch_size", 2]
    step = kill_after_checkpoint(DISTILL, out, model, data, *args, "--max_train_steps", 100, step=2)
    assert 2 <= step < STEPS and not (out / "transformer").exists()
    resume(DISTILL, out, model, data, *args, "--max_train_steps", STEPS, killed_at=step)
    assert_same_run(out, ref, names=BOTH, keys=ROLES)


@pytest.mark.parametrize("steps", [2, 3])
def test_dmd_pipeline_samples_as_validation_did(family, steps):
    """The output folder's scheduler is a FewStepFlowScheduler on the generator's levels, and the family's
    diffusers pipeline samples the EMA generator in 2 and 3 steps as fastvideo's validation did (MochiPipeline
    cannot take 1 step: its own linear-quadratic schedule divides by zero first)."""
    name, _, data, out = family
    pipe = PIPELINES[name].from_pretrained(
        out, transformer=type_of(name).from_pretrained(out / "transformer_ema")
    )
    assert isinstance(pipe.scheduler, FewStepFlowScheduler)
    assert list(pipe.scheduler.config.noise_levels) == [1.0, 0.757, 0.522]
    expected = torch.load(out / "validation" / f"step-{STEPS:08d}" / f"steps-{steps}_cfg-1" / "prompt-00.pt")
    prompt = {k: v[None] for k, v in validation_prompts(data)[0].items() if k != "caption"}
    _, _, frames, height, width = expected.shape
    factor = 6 if name == "mochi" else 4
    got = pipe(**prompt, guidance_scale=1.0, num_inference_steps=steps, num_frames=(frames - 1) * factor + 1,
               height=height * 8, width=width * 8, generator=torch.Generator().manual_seed(0),
               output_type="latent").frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def type_of(name: str):
    from diffusers import MochiTransformer3DModel, WanTransformer3DModel

    return MochiTransformer3DModel if name == "mochi" else WanTransformer3DModel


def test_dmd_script_writes_a_few_step_pipeline_folder(tmp_path, tiny_mochi, processed, cli_env, repo_root):
    """scripts/distill_dmd_t2v.sh passes its settings through: 2 levels, the generator stepping every step."""
    import subprocess

    out = tmp_path / "dmd"
    env = dict(cli_env, MODEL_PATH=str(tiny_mochi), DATA_JSON_PATH=str(processed), OUTPUT_DIR=str(out),
               MAX_TRAIN_STEPS="2", CHECKPOINTING_STEPS="2", VALIDATION_STEPS="0", DMD_NOISE_LEVELS="1.0,0.5",
               GENERATOR_UPDATE_INTERVAL="1")  # fmt: skip
    proc = subprocess.run(["bash", "scripts/distill_dmd_t2v.sh"], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "--method dmd2" in proc.stdout
    assert len([v for v in metrics(out, "loss") if v is not None]) == 2  # the generator stepped every step
    assert list(FewStepFlowScheduler.from_pretrained(out / "scheduler").config.noise_levels) == [1.0, 0.5]


def test_lora_dmd_exports_a_lora_the_pipeline_samples_as_validation_did(tmp_path, tiny_mochi, processed):
    """--use_lora: generator and critic each train their own adapters on frozen bases (the real score is the
    generator's base with its adapters off); the exported LoRA, loaded by MochiPipeline with the
    FewStepFlowScheduler of the output folder, samples what validation sampled."""
    from fastvideo.training.lora import read_lora

    out = tmp_path / "run"
    run(DISTILL, out, tiny_mochi, processed, "--model_type", "mochi", *DMD, "--use_lora", "--lora_rank", 4,
        "--lora_alpha", 4, "--max_train_steps", 2, "--validation_steps", 2, "--train_batch_size", 2)  # fmt: skip
    assert [v is not None for v in metrics(out, "loss")] == [True, False]
    weights, info = read_lora(out / "lora_ema")
    assert weights and all(".lora_" in k for k in weights)
    pipe = MochiPipeline.from_pretrained(
        tiny_mochi, scheduler=FewStepFlowScheduler.from_pretrained(out / "scheduler")
    )
    pipe.load_lora_weights(out / "lora_ema", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    expected = torch.load(out / "validation" / "step-00000002" / "steps-3_cfg-1" / "prompt-00.pt")
    prompt = {k: v[None] for k, v in validation_prompts(processed)[0].items() if k != "caption"}
    got = pipe(**prompt, guidance_scale=1.0, num_inference_steps=3, num_frames=13, height=32, width=48,
               generator=torch.Generator().manual_seed(0), output_type="latent").frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
