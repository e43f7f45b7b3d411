"""LoRA fine-tuning: layouts and kill -9 resume equal one process, memory, diffusers-format export, fuse.

Each run is a real process, compared with ``lora_ref``: one process, global batch 2, a checkpoint every
step, an EMA of the adapters and validation at the last step (whose latents diffusers must reproduce).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from diffusers import MochiPipeline, MochiTransformer3DModel
from runs import ADAM_EPS, STEPS, TRAIN, assert_same_run, env, kill_after_checkpoint, resume, run
from safetensors.torch import load_file, save_file

from fastvideo.training.config import TrainConfig
from fastvideo.training.lora import check_lora_matches, read_lora

pytestmark = pytest.mark.slow
LORA = ["--use_lora", "--lora_rank", 4, "--lora_alpha", 8, "--lora_base_dtype", "fp32", "--use_ema", "--ema_decay", 0.5,
        "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--checkpointing_steps", 1]  # fmt: skip
BOTH = ("lora", "lora_ema")
LAST = f"step-{STEPS:08d}"


def lora_file(out, name: str = "lora") -> dict[str, torch.Tensor]:
    return load_file(out / name / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def lora_ref(tmp_path_factory, tiny_mochi, processed):
    out = tmp_path_factory.mktemp("lora-ref") / "run"
    run(TRAIN, out, tiny_mochi, processed, *LORA, "--max_train_steps", STEPS, "--train_batch_size", 2,
        "--validation_steps", STEPS, "--validation_sampling_steps", 4)  # fmt: skip
    return out


def test_killed_lora_fsdp2_run_resumes_exactly(tmp_path, tiny_mochi, processed, lora_ref, ref_b2):
    """kill -9 under LoRA + FSDP over 2 ranks, resumed there: equals one uninterrupted process. Its memory
    report is then set against full fine-tuning's (ref_b2): adapters, their gradients and Adam state only."""
    out = tmp_path / "run"
    args = [*LORA, "--train_batch_size", 1]
    step = kill_after_checkpoint(
        TRAIN, out, tiny_mochi, processed, *args, "--max_train_steps", 100, step=2, nproc=2
    )
    assert 2 <= step < STEPS and not (out / "lora").exists()
    resume(TRAIN, out, tiny_mochi, processed, *args, "--max_train_steps", STEPS, killed_at=step, nproc=2)
    assert_same_run(out, lora_ref, names=BOTH)
    assert any(v.abs().sum() > 0 for k, v in lora_file(out).items() if "lora_B" in k), (
        "training moved no adapter"
    )

    lora, full = (json.loads((run_dir / "memory.json").read_text()) for run_dir in (out, ref_b2))
    trained = lambda r: r["trainable_parameters"] + r["gradients"] + r["optimizer_state"]  # noqa: E731
    assert 2 * trained(lora) < 0.1 * trained(full)  # 2 ranks each hold half of the LoRA state
    assert lora["gradients"] == lora["trainable_parameters"]  # the frozen base has no gradients


def test_lora_sp2_equals_one_process(tmp_path, tiny_mochi, processed, lora_ref):
    out = tmp_path / "run"
    run(TRAIN, out, tiny_mochi, processed, *LORA, "--max_train_steps", STEPS, "--sp_size", 2,
        "--train_batch_size", 2, nproc=2)  # fmt: skip
    assert_same_run(out, lora_ref, names=BOTH)


def test_exported_lora_in_diffusers_reproduces_fastvideo_sampling(lora_ref, tiny_mochi, processed):
    """Validation sampled with the EMA adapters swapped in, so their export (lora_ema/) must reproduce it."""
    weights, info = read_lora(lora_ref / "lora_ema")
    assert info["rank"] == 4 and info["alpha"] == 8
    assert all(k.startswith("transformer.") for k in weights)
    pipe = MochiPipeline.from_pretrained(tiny_mochi)
    pipe.load_lora_weights(lora_ref / "lora_ema", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    ours = torch.load(lora_ref / "validation" / LAST / "prompt-00.pt")
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


def test_fuse_equals_base_plus_lora(lora_ref, tiny_mochi, tmp_path, repo_root):
    out = tmp_path / "fused"
    proc = subprocess.run([sys.executable, "-m", "fastvideo.training.lora", "fuse", "--model_path", str(tiny_mochi),
                           "--lora_path", str(lora_ref / "lora"), "--output", str(out)],
                          env=env(), cwd=repo_root, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    fused = MochiTransformer3DModel.from_pretrained(out)
    with_lora = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    with_lora.load_lora_adapter(lora_file(lora_ref), prefix="transformer", adapter_name="x")
    with_lora.set_adapters("x", 2.0)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 12, 2, 4, 6, generator=g), encoder_hidden_states=torch.randn(1, 8, 32,
                  generator=g), timestep=torch.tensor([300.0]), encoder_attention_mask=torch.ones(1, 8, dtype=torch.bool))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).sample, with_lora(**inputs).sample, rtol=1e-5, atol=1e-5)


def test_foreign_or_wrong_rank_lora_is_refused(lora_ref, tiny_mochi, tmp_path, repo_root):
    weights, _ = read_lora(lora_ref / "lora")
    model = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    with pytest.raises(ValueError, match="rank 4, expected 8"):
        check_lora_matches(weights, model, rank=8)
    foreign = {k.replace("attn1", "attn9"): v for k, v in weights.items()}
    foreign["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(4, 999)
    save_file(foreign, tmp_path / "foreign.safetensors")
    proc = subprocess.run([sys.executable, "-m", "fastvideo.training.lora", "fuse", "--model_path", str(tiny_mochi),
                           "--lora_path", str(tmp_path / "foreign.safetensors"), "--output", str(tmp_path / "x")],
                          env=env(), cwd=repo_root, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "attn9" in proc.stderr and "shape (4, 999)" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_optimizers(tmp_path, tiny_mochi, processed):
    out = tmp_path / "prodigy"
    run(TRAIN, out, tiny_mochi, processed, "--use_lora", "--lora_rank", 4, "--max_train_steps", 2,
        "--optimizer", "prodigy", "--learning_rate", 1.0)  # fmt: skip
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    cfg = TrainConfig(model_path=str(tiny_mochi), data_json_path=str(processed), optimizer="adamw8bit")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            cfg.check_settings(world_size=1)


def test_id_token_must_match_the_preprocessing(tiny_mochi, processed):
    cfg = TrainConfig(
        model_path=str(tiny_mochi), data_json_path=str(processed), use_lora=True, id_token="sks"
    )
    with pytest.raises(ValueError, match="ID_TOKEN=''"):
        cfg.check_settings(world_size=1)
