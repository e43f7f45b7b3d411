"""The trained tiny Mochi VAE: shipped in assets/, loaded by build_tiny, and it reconstructs clips.

Held-out clips are synthetic mp4 files of a seed the VAE never trained on, read with preprocessing's
own frame settings and loader, then encoded and decoded by the Mochi adapter (encode_video,
decode_latents) on the model build_tiny writes: the path preprocessing and sampling take.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKLMochi
from safetensors.torch import load_file

from fastvideo.data_preprocess.preprocess import PreprocessConfig
from fastvideo.data_preprocess.synthetic import describe_clip, make_synthetic_dataset
from fastvideo.data_preprocess.video import load_media
from fastvideo.models import tiny
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import TINY_MARKER, TINY_MOCHI_VAE, TINY_MOCHI_VAE_DIR, build_tiny

HELDOUT_SEED = 7
MIN_PSNR_DB = 25.0  # issue 6's goal


def psnr_db(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1], measured on pixels in [0, 1]."""
    return 10 * math.log10(1 / ((reference - decoded) / 2).pow(2).mean().item())


def test_shipped_vae_loads_with_the_tiny_architecture():
    files = {p.name: p.stat().st_size for p in TINY_MOCHI_VAE_DIR.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= set(files)
    assert sum(files.values()) < 3e6
    vae = AutoencoderKLMochi.from_pretrained(TINY_MOCHI_VAE_DIR)
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    for key, value in TINY_MOCHI_VAE.items():
        assert tuple(vae.config[key]) == value, key
    assert vae.config.latent_channels == 12 and vae.config.scaling_factor == 1.0
    assert (vae.temporal_compression_ratio, vae.spatial_compression_ratio) == (6, 8)
    default = AutoencoderKLMochi(**TINY_MOCHI_VAE).config
    for key in ("latents_mean", "latents_std"):
        values = vae.config[key]
        assert len(values) == 12 and all(math.isfinite(v) for v in values)
        assert list(values) != list(default[key]), f"{key} still has diffusers' defaults"
    assert min(vae.config.latents_std) > 0


def test_tiny_model_holds_the_shipped_vae(tiny_mochi):
    built = load_file(tiny_mochi / "vae" / "diffusion_pytorch_model.safetensors")
    shipped = AutoencoderKLMochi.from_pretrained(TINY_MOCHI_VAE_DIR).state_dict()
    assert built.keys() == shipped.keys()
    for name, tensor in shipped.items():
        assert torch.equal(built[name], tensor), name
    config = json.loads((tiny_mochi / "vae" / "config.json").read_text())
    assert config["latents_mean"] == AutoencoderKLMochi.load_config(TINY_MOCHI_VAE_DIR)["latents_mean"]


def test_heldout_clips_reconstruct_above_25_db_with_colour_and_motion(tiny_mochi, tmp_path):
    trained_on = json.loads((TINY_MOCHI_VAE_DIR / "training.json").read_text())["train_data_seed"]
    assert HELDOUT_SEED != trained_on
    data = make_synthetic_dataset(tmp_path / "heldout", num_videos=4, num_images=0, seed=HELDOUT_SEED)
    spec = PreprocessConfig(output_dir=str(tmp_path / "out"), model_path=str(tiny_mochi)).frame_spec()
    assert (spec.num_frames, spec.height, spec.width) == (25, 64, 96)  # preprocessing's defaults
    adapter = MochiAdapter(tiny_mochi)
    vae = adapter.load_vae()
    scores, latents, read_back = [], [], []
    for path in sorted(data.mochi_dir.glob("clip_*.mp4")):
        video = load_media(path, spec).frames.unsqueeze(0)
        latent = adapter.encode_video(vae, video)
        decoded = adapter.decode_latents(vae, latent)
        scores.append(psnr_db(video, decoded))
        latents.append(latent)
        frames = ((decoded[0].permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        read_back.append((data.captions[path.name], describe_clip(frames)))
    assert sum(scores) / len(scores) >= MIN_PSNR_DB, [round(s, 2) for s in scores]
    # A person sees what the caption says: every decoded clip shows one shape of the captioned
    # colour travelling the captioned way (the VAE before, which decoded every colour as one tan,
    # failed this).
    for caption, described in read_back:
        assert described is not None, caption
        shown = (described.colour, described.direction)
        assert shown == (caption.split()[1], caption.split()[-1]), (caption, described.caption)
    # Normalised latents are what the DiT trains on: about zero mean and unit variance.
    latents = torch.cat(latents)
    assert latents.mean().abs() < 0.25 and 0.75 < latents.std() < 1.25


def test_stale_tiny_model_is_rebuilt(tmp_path):
    out = build_tiny("mochi", tmp_path / "tiny", seed=0)
    marker = out / TINY_MARKER
    current = json.loads(marker.read_text())
    assert current["format"] == tiny.TINY_FORMAT and current["vae_sha256"] == tiny.tiny_mochi_vae_digest()
    marker.write_text(json.dumps({"model_type": "mochi", "seed": 0}))  # what format 1 (random VAE) wrote
    (out / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"stale")
    assert build_tiny("mochi", out, seed=0) == out
    assert json.loads(marker.read_text()) == current
    AutoencoderKLMochi.from_pretrained(out / "vae")
    marker.write_text(json.dumps({"model_type": "mochi", "seed": 3, "format": 1}))
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_tiny("mochi", out, seed=0)


def test_missing_vae_names_the_script(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, "TINY_MOCHI_VAE_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="scripts/train_tiny_vae.py"):
        build_tiny("mochi", tmp_path / "tiny", seed=0)
    assert not (tmp_path / "tiny").exists()
