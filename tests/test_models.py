"""The embedded tiny models: deterministic, diffusers-loadable, and encoded as their pipelines do.

Mochi against ``MochiPipeline``, Wan 2.1 against ``WanPipeline``; what holds for both is
parametrised over the families.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from diffusers import MochiPipeline, WanPipeline

from fastvideo.models import get_adapter_class
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import TINY_MARKER, TINY_WAN_DIT, build_tiny
from fastvideo.models.tiny import main as tiny_main
from fastvideo.models.wan import WanAdapter

FAMILIES = ("mochi", "wan")
# (model type, variant, fixture): every tiny model, the families' defaults and their other layouts.
TINY_MODELS = [("mochi", "", "tiny_mochi"), ("wan", "", "tiny_wan"), ("wan", "a14b", "tiny_wan_a14b"),
               ("wan", "i2v", "tiny_wan_i2v"), ("cogvideox", "", "tiny_cogvideox"),
               ("cogvideox", "2b", "tiny_cogvideox_2b"), ("cogvideox", "i2v", "tiny_cogvideox_i2v"),
               ("cogvideox", "1.5", "tiny_cogvideox_15"), ("hunyuan", "", "tiny_hunyuan"),
               ("hunyuan", "i2v", "tiny_hunyuan_i2v")]  # fmt: skip
# Folders a layout has beyond transformer, vae, text_encoder, tokenizer and scheduler.
EXTRA_FOLDERS = {("wan", "a14b"): ("transformer_2",), ("wan", "i2v"): ("image_encoder", "image_processor"),
                 ("hunyuan", ""): ("text_encoder_2", "tokenizer_2"),
                 ("hunyuan", "i2v"): ("text_encoder_2", "tokenizer_2", "image_processor")}  # fmt: skip


@pytest.fixture(params=TINY_MODELS, ids=lambda p: p[2])
def tiny_model(request):
    """(model_type, variant, folder) of each embedded tiny model, built once per session."""
    model_type, variant, fixture = request.param
    return model_type, variant, request.getfixturevalue(fixture)


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_build_is_deterministic(tiny_model, tmp_path):
    model_type, variant, built = tiny_model
    again = build_tiny(model_type, tmp_path / "again", seed=0, variant=variant)
    assert _digest(again) == _digest(built)
    other = build_tiny(model_type, tmp_path / "other", seed=1, variant=variant)
    assert (
        _digest(other)["transformer/diffusion_pytorch_model.safetensors"]
        != _digest(built)["transformer/diffusion_pytorch_model.safetensors"]
    )


def test_tiny_has_diffusers_layout(tiny_model):
    model_type, variant, built = tiny_model
    extra = EXTRA_FOLDERS.get((model_type, variant), ())
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", *extra):
        assert (built / sub).is_dir(), sub
    index = json.loads((built / "model_index.json").read_text())
    adapter = get_adapter_class(model_type)(built)
    assert index["_class_name"] == adapter.pipeline_class_name
    assert adapter.image_to_video == (variant == "i2v")
    assert (adapter.boundary_ratio() is not None) == (variant == "a14b")
    marker = json.loads((built / TINY_MARKER).read_text())
    assert (marker["model_type"], marker.get("variant", "")) == (model_type, variant)


def test_diffusers_mochi_pipeline_generates_from_tiny(tiny_mochi):
    pipe = MochiPipeline.from_pretrained(tiny_mochi)
    out = pipe(
        "a red circle moving right",
        num_frames=13,
        height=32,
        width=48,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames
    assert out.shape == (1, 13, 3, 32, 48)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0


def test_prompt_encoding_matches_diffusers(tiny_mochi):
    pipe = MochiPipeline.from_pretrained(tiny_mochi)
    adapter = MochiAdapter(tiny_mochi)
    adapter.load_text_encoder()
    prompts = ["a red circle moving right", "a blue square moving up quickly"]
    cond = adapter.encode_prompts(prompts)
    embeds, mask = cond["prompt_embeds"], cond["prompt_attention_mask"]
    assert embeds.shape == (2, 256, 32) and mask.shape == (2, 256) and mask.dtype == torch.bool
    for i, prompt in enumerate(prompts):
        ref_embeds, ref_mask, *_ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        torch.testing.assert_close(embeds[i : i + 1], ref_embeds.detach(), rtol=1e-5, atol=1e-5)
        assert torch.equal(mask[i : i + 1], ref_mask)


def test_video_latents_round_trip_through_pipeline_normalisation(tiny_mochi):
    """encode_video is the inverse of the normalisation MochiPipeline applies before vae.decode."""
    adapter = MochiAdapter(tiny_mochi)
    vae = adapter.load_vae()
    video = torch.rand(1, 3, 13, 32, 48) * 2 - 1
    latents = adapter.encode_video(vae, video)
    assert latents.shape == (1, 12, 3, 4, 6)
    raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 12, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 12, 1, 1, 1)
    # MochiPipeline's denormalisation, applied to our latents, gives back the raw VAE latents.
    torch.testing.assert_close(latents * std / vae.config.scaling_factor + mean, raw)
    decoded = adapter.decode_latents(vae, latents)
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded, vae.decode(raw).sample.clamp(-1, 1))


def test_tiny_wan_matches_the_real_layout(tiny_wan):
    """What Wan2.1-T2V-1.3B-Diffusers holds, in small: UMT5, a 512-token tokenizer, UniPC flow scheduler."""
    from transformers import AutoTokenizer

    index = json.loads((tiny_wan / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    scheduler = json.loads((tiny_wan / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler"
    assert (scheduler["prediction_type"], scheduler["use_flow_sigmas"], scheduler["flow_shift"]) == (
        "flow_prediction",
        True,
        3.0,
    )
    assert WanAdapter(tiny_wan).flow_shift() == 3.0
    tokenizer = AutoTokenizer.from_pretrained(tiny_wan, subfolder="tokenizer")
    assert tokenizer.model_max_length == 512
    ids = tokenizer("a red circle moving right").input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.unk_token_id not in ids
    config = json.loads((tiny_wan / "transformer" / "config.json").read_text())
    head_dim = config["attention_head_dim"]
    assert head_dim - 4 * (head_dim // 6) > 0 and (head_dim - 4 * (head_dim // 6)) % 2 == 0  # RoPE bands
    vae = json.loads((tiny_wan / "vae" / "config.json").read_text())
    assert (
        config["in_channels"]
        == config["out_channels"]
        == vae["z_dim"]
        == WanAdapter(tiny_wan).latent_channels
    )
    text = json.loads((tiny_wan / "text_encoder" / "config.json").read_text())
    assert config["text_dim"] == text["d_model"] == TINY_WAN_DIT["text_dim"]


def test_diffusers_wan_pipeline_generates_from_tiny(tiny_wan):
    """WanPipeline samples from the tiny folder, and decodes its latents as WanAdapter.decode_latents does."""
    pipe = WanPipeline.from_pretrained(tiny_wan)
    call = dict(num_frames=9, height=64, width=96, num_inference_steps=2, guidance_scale=5.0)
    prompt = "a red circle moving right"
    video = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **call).frames
    assert video.shape == (1, 9, 64, 96, 3)
    assert video.min() >= 0 and video.max() <= 1 and video.std() > 0
    latents = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames
    assert latents.shape == (1, 16, 3, 8, 12)
    # The DiT samples normalised latents: decoded the adapter's way they give the pipeline's video.
    adapter = WanAdapter(tiny_wan)
    decoded = adapter.decode_latents(adapter.load_vae(), latents)
    ours = ((decoded + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
    assert abs(ours - video).max() < 1e-4


def test_wan_prompt_encoding_matches_diffusers(tiny_wan):
    pipe = WanPipeline.from_pretrained(tiny_wan)
    adapter = WanAdapter(tiny_wan)
    adapter.load_text_encoder()
    prompts = ["a red circle moving right", "a blue square moving up quickly"]
    embeds = adapter.encode_prompts(prompts)["prompt_embeds"]
    assert embeds.shape == (2, 512, 32) and embeds.dtype == torch.float32
    for i, prompt in enumerate(prompts):
        ref, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)
        torch.testing.assert_close(embeds[i : i + 1], ref.detach(), rtol=1e-5, atol=1e-5)
        length = len(pipe.tokenizer(prompt).input_ids)
        assert embeds[i, :length].abs().sum(-1).min() > 0 and not embeds[i, length:].any()


def test_wan_latents_round_trip_through_pipeline_normalisation(tiny_wan):
    """encode_video is the inverse of the denormalisation WanPipeline applies before vae.decode."""
    adapter = WanAdapter(tiny_wan)
    vae = adapter.load_vae()
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    latents = adapter.encode_video(vae, video)
    assert latents.shape == (1, 16, *adapter.rules.latent_shape(9, 32, 48, 16)[1:]) == (1, 16, 3, 4, 6)
    raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    # WanPipeline's own lines: latents / (1 / std) + mean.
    torch.testing.assert_close(latents / inverse_std + mean, raw)
    decoded = adapter.decode_latents(vae, latents)
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded, vae.decode(raw).sample, rtol=1e-4, atol=1e-4)


def test_cogvideox_latents_decode_as_cogvideox_pipeline_decodes(tiny_cogvideox):
    """encode_video scales the posterior mode by the VAE's scaling_factor, and decode_latents is
    CogVideoXPipeline.decode_latents (frames-first latents divided by it) in fastvideo's layout."""
    from diffusers import CogVideoXPipeline

    from fastvideo.models.cogvideox import CogVideoXAdapter

    adapter = CogVideoXAdapter(tiny_cogvideox)
    vae = adapter.load_vae()
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    latents = adapter.encode_video(vae, video)
    assert latents.shape == (1, 16, *adapter.rules.latent_shape(9, 32, 48, 16)[1:]) == (1, 16, 3, 4, 6)
    torch.testing.assert_close(latents, vae.encode(video).latent_dist.mode() * 0.7)
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox)
    theirs = pipe.decode_latents(latents.permute(0, 2, 1, 3, 4)).clamp(-1, 1)
    torch.testing.assert_close(adapter.decode_latents(vae, latents), theirs, rtol=1e-4, atol=1e-4)


def test_tiny_cli_output_follows_the_model_type(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tiny_main(["--model_type", "wan"]) == 0
    marker = json.loads((tmp_path / "data" / "tiny-wan" / TINY_MARKER).read_text())
    assert (marker["model_type"], marker["seed"]) == ("wan", 0)
    assert not (tmp_path / "data" / "tiny-mochi").exists()


@pytest.mark.parametrize(
    ("frames", "ok"), [(1, True), (7, True), (25, True), (37, True), (24, False), (36, False), (0, False)]
)
def test_mochi_frame_rule(frames, ok):
    error = get_adapter_class("mochi").rules.frame_error(frames)
    assert (error is None) == ok
    if not ok:
        assert "6k+1" in error


def test_frame_rule_message_names_valid_values():
    assert "31 or 37" in get_adapter_class("mochi").rules.frame_error(36)


def test_size_rule_message():
    rules = get_adapter_class("mochi").rules
    assert rules.size_error(480, 848) is None
    message = rules.size_error(100, 848)
    assert "HEIGHT=100" in message and "96 or 112" in message and "multiples of 16" in message


def test_unknown_model_type():
    with pytest.raises(ValueError, match="supported: mochi"):
        get_adapter_class("sora")


def test_tiny_cli_refuses_foreign_directory(tmp_path, cli_env, repo_root):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "fastvideo.models.tiny", "--output", str(tmp_path / "x")],
        capture_output=True, text=True, env=cli_env, cwd=repo_root,
    )  # fmt: skip
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "x" / "file").read_text() == "mine"


def test_download_offline_fails_with_one_line(tmp_path, cli_env, repo_root):
    cli_env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "scripts/download_hf.py", "--repo_id", "genmo/mochi-1-preview", "--local_dir", str(tmp_path)],
        capture_output=True, text=True, env=cli_env, cwd=repo_root, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: could not download model genmo/mochi-1-preview")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_vae_tiling_is_on_by_default_and_encodes_large_frames(tiny_mochi):
    vae = MochiAdapter(tiny_mochi).load_vae()
    assert vae.use_tiling
    assert not MochiAdapter(tiny_mochi, vae_tiling=False).load_vae().use_tiling
    calls = []
    tiled_encode = vae.tiled_encode
    vae.tiled_encode = lambda x: calls.append(x.shape) or tiled_encode(x)
    video = torch.rand(1, 3, 7, 272, 320) * 2 - 1  # above the 256-px tile: encoded in blended tiles
    assert MochiAdapter(tiny_mochi).encode_video(vae, video).shape == (1, 12, 2, 34, 40)
    assert len(calls) == 1
