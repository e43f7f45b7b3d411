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
