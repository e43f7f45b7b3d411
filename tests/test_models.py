"""The embedded tiny Mochi model: deterministic, diffusers-loadable, and encoded as MochiPipeline does."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from diffusers import MochiPipeline

from fastvideo.models import get_adapter_class
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import build_tiny


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_build_is_deterministic(tiny_mochi, tmp_path):
    again = build_tiny("mochi", tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_mochi)
    other = build_tiny("mochi", tmp_path / "other", seed=1)
    assert (
        _digest(other)["transformer/diffusion_pytorch_model.safetensors"]
        != _digest(tiny_mochi)["transformer/diffusion_pytorch_model.safetensors"]
    )


def test_tiny_has_diffusers_layout(tiny_mochi):
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_mochi / sub).is_dir(), sub
    assert (tiny_mochi / "model_index.json").is_file()


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
    embeds, mask = adapter.encode_prompts(prompts)
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
