"""Shared fixtures: the tiny Mochi model and the synthetic dataset, built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_mochi(tmp_path_factory) -> Path:
    from fastvideo.models.tiny import build_tiny

    return build_tiny("mochi", tmp_path_factory.mktemp("models") / "tiny-mochi", seed=0)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    from fastvideo.models.tiny import build_tiny

    return build_tiny("wan", tmp_path_factory.mktemp("models") / "tiny-wan", seed=0)


@pytest.fixture(scope="session")
def tiny_wan_a14b(tmp_path_factory) -> Path:
    """Wan 2.2 A14B's layout at tiny size: two noise-level experts (boundary 0.875, flow shift 12)."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny("wan", tmp_path_factory.mktemp("models") / "tiny-wan-a14b", seed=0, variant="a14b")


@pytest.fixture(scope="session")
def tiny_wan_i2v(tmp_path_factory) -> Path:
    """Wan 2.1 image-to-video's layout at tiny size (WanImageToVideoPipeline, a tiny CLIP vision tower)."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny("wan", tmp_path_factory.mktemp("models") / "tiny-wan-i2v", seed=0, variant="i2v")


@pytest.fixture(scope="session")
def tiny_hunyuan(tmp_path_factory) -> Path:
    """HunyuanVideo's layout at tiny size: a 2+2-block DiT, a tiny Llama and CLIP text tower, a random VAE."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny("hunyuan", tmp_path_factory.mktemp("models") / "tiny-hunyuan", seed=0)


@pytest.fixture(scope="session")
def tiny_hunyuan_i2v(tmp_path_factory) -> Path:
    """HunyuanVideo-I2V's layout at tiny size (HunyuanVideoImageToVideoPipeline): the DiT with token_replace,
    a tiny Llava (576 image tokens, the pipeline's default template), the CLIP text tower, a random VAE."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny(
        "hunyuan", tmp_path_factory.mktemp("models") / "tiny-hunyuan-i2v", seed=0, variant="i2v"
    )


@pytest.fixture(scope="session")
def tiny_cogvideox(tmp_path_factory) -> Path:
    """CogVideoX-5b's layout at tiny size: a 4-block DiT with rotary positions, T5 at 226 tokens, a random VAE."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny("cogvideox", tmp_path_factory.mktemp("models") / "tiny-cogvideox", seed=0)


@pytest.fixture(scope="session")
def tiny_cogvideox_2b(tmp_path_factory) -> Path:
    """CogVideoX-2b's layout at tiny size: sinusoidal positions, SNR shift 3."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny(
        "cogvideox", tmp_path_factory.mktemp("models") / "tiny-cogvideox-2b", seed=0, variant="2b"
    )


@pytest.fixture(scope="session")
def tiny_cogvideox_i2v(tmp_path_factory) -> Path:
    """CogVideoX-5b-I2V's layout at tiny size: 32 input channels (the first frame's latents beside the
    noisy ones), learned positions."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny(
        "cogvideox", tmp_path_factory.mktemp("models") / "tiny-cogvideox-i2v", seed=0, variant="i2v"
    )


@pytest.fixture(scope="session")
def tiny_cogvideox_15(tmp_path_factory) -> Path:
    """CogVideoX 1.5's layout at tiny size: latent frames patched in pairs."""
    from fastvideo.models.tiny import build_tiny

    return build_tiny(
        "cogvideox", tmp_path_factory.mktemp("models") / "tiny-cogvideox-15", seed=0, variant="1.5"
    )


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from fastvideo.data_preprocess.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_videos=4, num_images=1, seed=0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for subprocesses: this checkout importable, one thread per process (2-core CI)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHON"] = sys.executable
    return env


def preprocess_synthetic(model_type: str, model: Path, synthetic, out: Path) -> Path:
    """The synthetic set preprocessed for a tiny model (13 frames at 32x48) with two validation prompts."""
    from fastvideo.data_preprocess.preprocess import main as preprocess_main

    prompts = out.parent / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue square moving up\n")
    code = preprocess_main(
        ["--model_type", model_type, "--model_path", str(model), "--data_dir", str(synthetic.mochi_dir),
         "--output_dir", str(out), "--num_frames", "13", "--height", "32", "--width", "48",
         "--validation_prompt_txt", str(prompts)]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="session")
def processed(tmp_path_factory, tiny_mochi, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny model: 13 frames at 32x48 -> latents [12, 3, 4, 6]."""
    return preprocess_synthetic("mochi", tiny_mochi, synthetic, tmp_path_factory.mktemp("processed") / "data")


@pytest.fixture(scope="session")
def processed_wan(tmp_path_factory, tiny_wan, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny Wan: 13 frames at 32x48 -> latents [16, 4, 4, 6]."""
    return preprocess_synthetic("wan", tiny_wan, synthetic, tmp_path_factory.mktemp("processed_wan") / "data")


@pytest.fixture(scope="session")
def processed_hunyuan(tmp_path_factory, tiny_hunyuan, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny HunyuanVideo: 13 frames at 32x48 -> latents [16, 4, 4, 6],
    the record prompt_embeds [256, 32], prompt_attention_mask [256], pooled_prompt_embeds [32]."""
    out = tmp_path_factory.mktemp("processed_hunyuan") / "data"
    return preprocess_synthetic("hunyuan", tiny_hunyuan, synthetic, out)


@pytest.fixture(scope="session")
def processed_hunyuan_i2v(tmp_path_factory, tiny_hunyuan_i2v, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny HunyuanVideo image-to-video: the text record encoded with
    each clip's first frame (prompt_embeds [396, 32]: 144 image tokens, then the prompt's), and its
    image_latents [16, 1, 4, 6]."""
    out = tmp_path_factory.mktemp("processed_hunyuan_i2v") / "data"
    return preprocess_synthetic("hunyuan", tiny_hunyuan_i2v, synthetic, out)


@pytest.fixture(scope="session")
def processed_cogvideox(tmp_path_factory, tiny_cogvideox, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny CogVideoX: 13 frames at 32x48 -> latents [16, 4, 4, 6],
    the record prompt_embeds [226, 32]."""
    out = tmp_path_factory.mktemp("processed_cogvideox") / "data"
    return preprocess_synthetic("cogvideox", tiny_cogvideox, synthetic, out)


@pytest.fixture(scope="session")
def processed_cogvideox_i2v(tmp_path_factory, tiny_cogvideox_i2v, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny CogVideoX image-to-video: the record plus each clip's
    first-frame latents (image_latents [16, 4, 4, 6], zero past the first latent frame)."""
    out = tmp_path_factory.mktemp("processed_cogvideox_i2v") / "data"
    return preprocess_synthetic("cogvideox", tiny_cogvideox_i2v, synthetic, out)


@pytest.fixture(scope="session")
def ref_b2(tmp_path_factory, tiny_mochi, processed) -> Path:
    """Fine-tuning reference: one process, STEPS steps of global batch 2, clipping off, a checkpoint every step."""
    from runs import B2, STEPS, TRAIN, run

    out = tmp_path_factory.mktemp("ref_b2") / "run"
    run(TRAIN, out, tiny_mochi, processed, *B2, "--max_train_steps", STEPS, "--train_batch_size", 2)
    return out


@pytest.fixture(scope="session")
def processed_wan_i2v(tmp_path_factory, tiny_wan_i2v, synthetic) -> Path:
    """The synthetic set preprocessed for the tiny Wan image-to-video: the Wan record plus each clip's
    first-frame conditioning (image_embeds [17, 32], image_latents [16, 4, 4, 6])."""
    out = tmp_path_factory.mktemp("processed_wan_i2v") / "data"
    return preprocess_synthetic("wan", tiny_wan_i2v, synthetic, out)
