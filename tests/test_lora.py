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
        "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--checkpointing_steps", 1, "--lora_comfyui"]  # fmt: skip
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


def test_lora_comfyui_flag_writes_the_fused_keys(lora_ref, tiny_mochi):
    """--lora_comfyui writes lora/comfyui_lora.safetensors beside the export: what comfyui_weights makes
    of it (checked against diffusers' converter below), one adapter per fused qkv."""
    from fastvideo.models.mochi import MochiAdapter
    from fastvideo.training.lora import comfyui_weights

    written = load_file(lora_ref / "lora" / "comfyui_lora.safetensors")
    weights, info = read_lora(lora_ref / "lora")
    expected = comfyui_weights(weights, info["alpha"], MochiAdapter(tiny_mochi))
    assert (
        written.keys() == expected.keys() and "diffusion_model.blocks.0.attn.qkv_y.lora_up.weight" in written
    )
    assert all(torch.equal(written[k], v) for k, v in expected.items())


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


def mochi_original_checkpoint(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A diffusers Mochi DiT state under the original checkpoint's names (what ComfyUI loads): the inverse
    of diffusers' ``convert_mochi_transformer_checkpoint_to_diffusers``, whose swaps undo themselves."""
    from diffusers.loaders.single_file_utils import swap_proj_gate, swap_scale_shift

    renamed = {
        "x_embedder.proj": "patch_embed.proj", "t_embedder.mlp.0": "time_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_embed.timestep_embedder.linear_2", "t5_y_embedder.to_kv": "time_embed.pooler.to_kv",
        "t5_y_embedder.to_q": "time_embed.pooler.to_q", "t5_y_embedder.to_out": "time_embed.pooler.to_out",
        "t5_yproj": "time_embed.caption_proj", "final_layer.linear": "proj_out",
    }  # fmt: skip
    out = {f"{o}.{p}": state[f"{d}.{p}"] for o, d in renamed.items() for p in ("weight", "bias")}
    out["final_layer.mod.weight"] = swap_scale_shift(state["norm_out.linear.weight"], 0)
    out["final_layer.mod.bias"] = swap_scale_shift(state["norm_out.linear.bias"], 0)
    out["pos_frequencies"] = state["pos_frequencies"]
    for i in range(num_layers):
        o, d, last = f"blocks.{i}.", f"transformer_blocks.{i}.", i == num_layers - 1
        context_mod = "norm1_context.linear_1" if last else "norm1_context.linear"
        for p in ("weight", "bias"):
            out[o + f"mod_x.{p}"] = state[d + f"norm1.linear.{p}"]
            out[o + f"mod_y.{p}"] = state[d + f"{context_mod}.{p}"]
            out[o + f"attn.proj_x.{p}"] = state[d + f"attn1.to_out.0.{p}"]
            if not last:
                out[o + f"attn.proj_y.{p}"] = state[d + f"attn1.to_add_out.{p}"]
        out[o + "attn.qkv_x.weight"] = torch.cat([state[d + f"attn1.to_{x}.weight"] for x in "qkv"])
        out[o + "attn.qkv_y.weight"] = torch.cat([state[d + f"attn1.add_{x}_proj.weight"] for x in "qkv"])
        for orig, ours in (("q_norm_x", "norm_q"), ("k_norm_x", "norm_k"), ("q_norm_y", "norm_added_q"),
                           ("k_norm_y", "norm_added_k")):  # fmt: skip
            out[o + f"attn.{orig}.weight"] = state[d + f"attn1.{ours}.weight"]
        for stream, ff in (("x", "ff"), ("y", "ff_context")) if not last else (("x", "ff"),):
            out[o + f"mlp_{stream}.w1.weight"] = swap_proj_gate(state[d + f"{ff}.net.0.proj.weight"])
            out[o + f"mlp_{stream}.w2.weight"] = state[d + f"{ff}.net.2.weight"]
    return out


def test_mochi_comfyui_lora_applied_to_the_original_checkpoint_equals_ours_through_diffusers(tiny_mochi):
    """ComfyUI adds a LoRA to the original checkpoint's modules, where Mochi fuses q, k and v into qkv_x
    (qkv_y for the text). Applied there as ComfyUI applies it (alpha / rank x up @ down) and converted
    by diffusers' own Mochi converter (48 blocks, so the tiny DiT at that depth), the ComfyUI file gives
    the weights our LoRA gives at alpha / rank, every target included, also where only part of a fused
    module is adapted (to_q alone in block 1)."""
    from diffusers.loaders.single_file_utils import convert_mochi_transformer_checkpoint_to_diffusers

    from fastvideo.models.mochi import MochiAdapter
    from fastvideo.models.tiny import TINY_MOCHI_DIT
    from fastvideo.training.lora import comfyui_weights

    layers, rank, alpha = 48, 4, 8.0
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**{**TINY_MOCHI_DIT, "num_layers": layers})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    original = mochi_original_checkpoint(state, layers)
    round_trip = convert_mochi_transformer_checkpoint_to_diffusers(dict(original))
    assert round_trip.keys() == state.keys() and all(torch.equal(round_trip[k], v) for k, v in state.items())

    modules = dict(model.named_modules())
    targets = MochiAdapter.lora_targets.split(",")
    weights, expected = {}, dict(state)
    for i in range(layers):
        for proj in targets if i != 1 else ["to_q"]:
            name = f"transformer_blocks.{i}.attn1.{proj}"
            if name not in modules:  # the last block has no text output projection
                continue
            linear = modules[name]
            down = torch.randn(rank, linear.in_features) / 10
            up = torch.randn(linear.out_features, rank) / 10
            weights[f"transformer.{name}.lora_A.weight"] = down
            weights[f"transformer.{name}.lora_B.weight"] = up
            expected[f"{name}.weight"] = state[f"{name}.weight"] + alpha / rank * up @ down
    comfy = comfyui_weights(weights, alpha, MochiAdapter(tiny_mochi))
    assert comfy["diffusion_model.blocks.0.attn.qkv_x.lora_down.weight"].shape == (3 * rank, 128)
    assert comfy["diffusion_model.blocks.1.attn.qkv_x.lora_up.weight"].shape == (3 * 128, rank)
    patched = dict(original)
    for key in [k for k in comfy if k.endswith(".lora_down.weight")]:
        module = key.removeprefix("diffusion_model.").removesuffix(".lora_down.weight")
        down, up = comfy[key], comfy[key.replace("lora_down", "lora_up")]
        scale = float(comfy[key.replace("lora_down.weight", "alpha")]) / down.shape[0]  # as ComfyUI scales
        patched[f"{module}.weight"] = original[f"{module}.weight"] + scale * up @ down
    got = convert_mochi_transformer_checkpoint_to_diffusers(patched)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
