"""LoRA fine-tuning: layouts equal one process, memory, diffusers-format export, fuse, resume, bad files."""

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
from safetensors.torch import load_file, save_file
from test_train import losses, train, train_cmd

from fastvideo.training.lora import check_lora_matches, read_lora

pytestmark = pytest.mark.slow
LORA = ["--use_lora", "--lora_rank", 4, "--lora_alpha", 8, "--lora_base_dtype", "fp32"]


def lora_file(out, name: str = "lora") -> dict[str, torch.Tensor]:
    return load_file(out / name / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def env(repo_root):
    return dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory, tiny_mochi, processed, env):
    """3 LoRA steps in one process, global batch 2, validated at the end with 4 sampling steps."""
    out = tmp_path_factory.mktemp("lora-ref") / "run"
    train(out, tiny_mochi, processed, env, *LORA, "--max_train_steps", 3, "--train_batch_size", 2,
          "--validation_steps", 3, "--validation_sampling_steps", 4)  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("layout", "batch"), [(["--sp_size", 1], 1), (["--sp_size", 2], 2)], ids=["fsdp2", "sp2"]
)
def test_lora_layouts_equal_one_process(tmp_path, tiny_mochi, processed, env, lora_reference, layout, batch):
    out = tmp_path / "run"
    train(out, tiny_mochi, processed, env, *LORA, "--max_train_steps", 3, "--train_batch_size", batch, *layout,
          nproc=2)  # fmt: skip
    torch.testing.assert_close(
        torch.tensor(losses(out)), torch.tensor(losses(lora_reference)), rtol=1e-5, atol=1e-7
    )
    ref, got = lora_file(lora_reference), lora_file(out)
    assert ref.keys() == got.keys() and len(ref) > 0
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k), "training moved no adapter"


def test_lora_memory_is_a_small_fraction_of_full(tmp_path, tiny_mochi, processed, env):
    runs = {}
    for name, extra in (("full", []), ("lora", ["--use_lora", "--lora_rank", 4, "--lora_alpha", 8])):
        out = tmp_path / name
        train(out, tiny_mochi, processed, env, "--max_train_steps", 1, *extra, nproc=2)
        runs[name] = json.loads((out / "memory.json").read_text())
    full, lora = runs["full"], runs["lora"]
    trained = lambda r: r["trainable_parameters"] + r["gradients"] + r["optimizer_state"]  # noqa: E731
    assert trained(lora) < 0.1 * trained(full)
    assert lora["total"] < full["total"]
    # The frozen base holds no gradients and no optimizer state.
    assert lora["gradients"] == lora["trainable_parameters"]


def test_exported_lora_in_diffusers_reproduces_fastvideo_sampling(lora_reference, tiny_mochi, processed):
    weights, info = read_lora(lora_reference / "lora")
    assert info["rank"] == 4 and info["alpha"] == 8
    assert all(k.startswith("transformer.") for k in weights)
    pipe = MochiPipeline.from_pretrained(tiny_mochi)
    pipe.load_lora_weights(lora_reference / "lora", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    ours = torch.load(lora_reference / "validation" / "step-00000003" / "prompt-00.pt")
    val = processed / "validation"
    record = json.loads((val / "videos2caption.json").read_text())[0]
    embeds = torch.load(val / "prompt_embed" / record["prompt_embed_path"]).float()[None]
    mask = torch.load(val / "prompt_attention_mask" / record["prompt_attention_mask"])[None]
    _, _, t, h, w = ours.shape
    theirs = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_frames=(t - 1) * 6 + 1, height=h * 8,
                  width=w * 8, num_inference_steps=4, guidance_scale=1.0, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    pipe.set_adapters("fastvideo", 0.0)  # the LoRA matters: without it the result differs
    base = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_frames=(t - 1) * 6 + 1, height=h * 8,
                width=w * 8, num_inference_steps=4, guidance_scale=1.0, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert (base - ours).abs().max() > 1e-3


def test_fuse_equals_base_plus_lora(lora_reference, tiny_mochi, tmp_path, env, repo_root):
    out = tmp_path / "fused"
    proc = subprocess.run([sys.executable, "-m", "fastvideo.training.lora", "fuse", "--model_path", str(tiny_mochi),
                           "--lora_path", str(lora_reference / "lora"), "--output", str(out)],
                          env=env, cwd=repo_root, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    fused = MochiTransformer3DModel.from_pretrained(out)
    with_lora = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    with_lora.load_lora_adapter(lora_file(lora_reference), prefix="transformer", adapter_name="x")
    with_lora.set_adapters("x", 2.0)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 12, 2, 4, 6, generator=g), encoder_hidden_states=torch.randn(1, 8, 32,
                  generator=g), timestep=torch.tensor([300.0]), encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).sample, with_lora(**inputs).sample, rtol=1e-5, atol=1e-5)


def test_foreign_or_wrong_rank_lora_is_refused(lora_reference, tiny_mochi, tmp_path, env, repo_root):
    weights, _ = read_lora(lora_reference / "lora")
    model = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    with pytest.raises(ValueError, match="rank 4, expected 8"):
        check_lora_matches(weights, model, rank=8)
    foreign = {k.replace("attn1", "attn9"): v for k, v in weights.items()}
    foreign["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(4, 999)
    save_file(foreign, tmp_path / "foreign.safetensors")
    proc = subprocess.run([sys.executable, "-m", "fastvideo.training.lora", "fuse", "--model_path", str(tiny_mochi),
                           "--lora_path", str(tmp_path / "foreign.safetensors"), "--output", str(tmp_path / "x")],
                          env=env, cwd=repo_root, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "attn9" in proc.stderr and "shape (4, 999)" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_killed_lora_run_resumes_with_identical_losses(tmp_path, tiny_mochi, processed, env):
    args = [*LORA, "--max_train_steps", 5, "--checkpointing_steps", 1, "--use_ema"]
    full = tmp_path / "full"
    train(full, tiny_mochi, processed, env, *args)
    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(out, tiny_mochi, processed, *args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "step-00000002").is_dir():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "lora").exists(), "the run finished before it was killed"
    train(out, tiny_mochi, processed, env, *args, "--resume_from_checkpoint", "latest")
    assert losses(out) == losses(full)
    for name in ("lora", "lora_ema"):
        ref, got = lora_file(full, name), lora_file(out, name)
        assert all(torch.equal(got[k], ref[k]) for k in ref), name


def test_optimizers(tmp_path, tiny_mochi, processed, env):
    out = tmp_path / "prodigy"
    train(out, tiny_mochi, processed, env, *LORA, "--max_train_steps", 2, "--optimizer", "prodigy",
          "--learning_rate", 1.0)  # fmt: skip
    assert len(losses(out)) == 2
    proc = train(tmp_path / "bnb", tiny_mochi, processed, env, *LORA, "--optimizer", "adamw8bit", check=False)
    assert proc.returncode == 2 and "needs CUDA" in proc.stderr


def test_id_token_must_match_the_preprocessing(tmp_path, tiny_mochi, processed, env):
    proc = train(tmp_path / "run", tiny_mochi, processed, env, *LORA, "--id_token", "sks", check=False)
    assert proc.returncode == 2 and "ID_TOKEN=''" in proc.stderr
