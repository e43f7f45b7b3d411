"""The sampler: equal to diffusers' MochiPipeline and WanPipeline (euler; PCM folders), SP=2 equal to SP=1,
clear errors."""

from __future__ import annotations

import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, WanPipeline

from fastvideo.distill.pcm import PCMFlowScheduler
from fastvideo.sample.sampler import Request, SampleConfig, Sampler
from fastvideo.training.export import write_pipeline_folder

PROMPT = "a red circle moving right"
SMALL = dict(num_frames=13, height=32, width=48)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def diffusers_latents(folder, steps: int, guidance: float, seed: int, family: str = "mochi") -> torch.Tensor:
    if family == "wan":
        # Euler on the folder's flow shift: what fastvideo's "euler" samples with (the folder holds UniPC).
        pipe = WanPipeline.from_pretrained(folder)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    else:
        pipe = MochiPipeline.from_pretrained(folder)
    return pipe(PROMPT, negative_prompt="", guidance_scale=guidance, num_inference_steps=steps, **SMALL,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").frames  # fmt: skip


# family: (guidance scales to test, latent shape of SMALL)
FAMILIES = {"mochi": ((1.0, 4.5), (1, 12, 3, 4, 6)), "wan": ((1.0, 5.0), (1, 16, 4, 4, 6))}


@pytest.fixture(scope="module")
def sampler(tiny_mochi):
    return Sampler(SampleConfig(model_path=str(tiny_mochi)))


@pytest.fixture(scope="module")
def samplers(request) -> dict:
    """One Sampler per family, built on first use."""
    built = {}

    def get(family: str) -> Sampler:
        if family not in built:
            model = request.getfixturevalue(f"tiny_{family}")
            built[family] = Sampler(SampleConfig(model_type=family, model_path=str(model)))
        return built[family]

    return get


@pytest.mark.parametrize(
    "family,cfg", [(f, c) for f in FAMILIES for c in ("no-cfg", "cfg")], ids=lambda v: str(v)
)
def test_euler_equals_diffusers_pipeline(request, samplers, family, cfg):
    scales, shape = FAMILIES[family]
    guidance = scales[cfg == "cfg"]
    model = request.getfixturevalue(f"tiny_{family}")
    got = samplers(family).generate(
        Request(PROMPT, seed=3, num_inference_steps=4, guidance_scale=guidance, **SMALL)
    )
    expected = diffusers_latents(model, steps=4, guidance=guidance, seed=3, family=family)
    assert got.shape == expected.shape == shape
    assert relative_error(got, expected) < 1e-4


def test_two_experts_sample_like_wan_pipeline(tiny_wan_a14b):
    """Wan 2.2 A14B's layout: the sampler switches from transformer/ to transformer_2/ where WanPipeline
    does (timestep below boundary_ratio * 1000), and the switch matters."""
    sampler = Sampler(SampleConfig(model_type="wan", model_path=str(tiny_wan_a14b)))
    request = Request(PROMPT, seed=3, num_inference_steps=4, guidance_scale=4.0, **SMALL)
    timesteps = sampler.adapter.default_sigmas(4)[:-1] * 1000
    assert (timesteps >= 875).any() and (timesteps < 875).any()  # both experts take steps
    got = sampler.generate(request)
    expected = diffusers_latents(tiny_wan_a14b, steps=4, guidance=4.0, seed=3, family="wan")
    assert relative_error(got, expected) < 1e-4
    sampler.transformer = sampler.transformer.high  # the high-noise expert alone samples something else
    assert relative_error(sampler.generate(request), expected) > 0.05


def test_image_to_video_samples_like_wan_i2v_pipeline(tmp_path, tiny_wan_i2v, tiny_wan):
    """An image-to-video folder samples from --image (of another size: both resize it) exactly as
    WanImageToVideoPipeline does, guidance included; a text-to-video folder refuses --image and an
    image-to-video one needs it."""
    import numpy as np
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "first.png")
    sampler = Sampler(SampleConfig(model_type="wan", model_path=str(tiny_wan_i2v)))
    request = Request(PROMPT, seed=3, num_inference_steps=3, guidance_scale=3.0, image=str(tmp_path / "first.png"),
                      **SMALL)  # fmt: skip
    got = sampler.generate(request)
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_wan_i2v)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    expected = pipe(image=Image.fromarray(pixels), prompt=PROMPT, negative_prompt="", guidance_scale=3.0,
                    num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(3), output_type="latent",
                    **SMALL).frames  # fmt: skip
    assert got.shape == (1, 16, 4, 4, 6) and relative_error(got, expected) < 1e-4
    with pytest.raises(ValueError, match="image-to-video model: give the first frame"):
        sampler.generate(Request(PROMPT, num_inference_steps=2, **SMALL))
    text_only = Sampler(SampleConfig(model_type="wan", model_path=str(tiny_wan)))
    with pytest.raises(ValueError, match="text-to-video model: it takes no --image"):
        text_only.generate(Request(PROMPT, num_inference_steps=2, image=str(tmp_path / "first.png"), **SMALL))


def test_pcm_folder_is_sampled_on_its_grid_like_diffusers(tmp_path, tiny_mochi):
    folder = tmp_path / "distilled"
    folder.mkdir()
    assert (
        write_pipeline_folder(folder, tiny_mochi, PCMFlowScheduler(num_euler_timesteps=10), trained="") == []
    )
    pcm = Sampler(SampleConfig(model_path=str(folder)))
    kind, sigmas, guidance = pcm.resolve(Request(PROMPT, num_inference_steps=4))
    assert kind == "pcm_linear_quadratic" and guidance == 1.0
    torch.testing.assert_close(sigmas, PCMFlowScheduler(num_euler_timesteps=10).grid.sampling_sigmas(4))
    got = pcm.generate(Request(PROMPT, seed=1, num_inference_steps=4, **SMALL))
    expected = diffusers_latents(folder, steps=4, guidance=1.0, seed=1)
    assert relative_error(got, expected) < 1e-4
    with pytest.raises(ValueError, match="at most 10 steps"):
        pcm.resolve(Request(PROMPT, num_inference_steps=11))


def test_bad_requests_name_valid_values(sampler):
    with pytest.raises(ValueError, match="nearest valid values: 19 or 25"):
        sampler.resolve(Request(PROMPT, num_frames=24))
    with pytest.raises(ValueError, match="multiples of 16"):
        sampler.resolve(Request(PROMPT, height=40))


def run_sampler(tiny_mochi, out, cli_env, nproc: int, *extra):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launch if nproc > 1 else [sys.executable]), "fastvideo/sample/sample_t2v_mochi.py", "--model_path", str(tiny_mochi), "--prompts",
           f"{PROMPT}|a blue square moving up", "--seeds", "0,5", "--num_inference_steps", "3", "--guidance_scale",
           "3", "--output_path", str(out), "--save_latents", "--num_frames", "13", "--height", "32", "--width", "64",
           *extra]  # fmt: skip
    return subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sp2_sampling_equals_one_process(tmp_path, tiny_mochi, cli_env, repo_root):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        proc = run_sampler(tiny_mochi, out, cli_env, nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
    videos = sorted(p.name for p in one.glob("*.mp4"))
    assert videos == sorted(p.name for p in two.glob("*.mp4")) and len(videos) == 4
    for name in videos:
        ref, got = (
            torch.load(one / name.replace(".mp4", ".pt")),
            torch.load(two / name.replace(".mp4", ".pt")),
        )
        assert relative_error(got, ref) < 1e-5, name
        frames = iio.imread(two / name, plugin="pyav")
        assert frames.shape == (13, 32, 64, 3)
    assert "s denoising" in proc.stdout + proc.stderr


def test_sampler_refuses_bad_input_with_a_message(tmp_path, tiny_mochi, cli_env):
    proc = run_sampler(tiny_mochi, tmp_path / "bad", cli_env, 1, "--num_frames", "12")
    assert (
        proc.returncode == 2
        and "NUM_FRAMES=12 is not valid" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = run_sampler(tmp_path / "missing", tmp_path / "bad", cli_env, 1)
    assert proc.returncode == 2 and "not a diffusers pipeline folder" in proc.stderr


def test_lora_sampling_equals_diffusers_load_lora_weights(tmp_path, tiny_mochi):
    """--lora_path with the scale from fastvideo_lora.json equals load_lora_weights + set_adapters(alpha/rank)."""
    from diffusers import MochiTransformer3DModel

    from fastvideo.models import get_adapter_class
    from fastvideo.training.lora import add_lora, lora_weights, save_lora

    adapter = get_adapter_class("mochi")(tiny_mochi)
    model = MochiTransformer3DModel.from_pretrained(tiny_mochi / "transformer")
    add_lora(model, rank=4, alpha=8, targets=adapter.lora_targets, base_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    adapters = {
        k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items() if ".lora_" in k
    }
    save_lora(tmp_path / "lora", lora_weights(adapters), rank=4, alpha=8, targets=adapter.lora_targets,
              adapter=adapter)  # fmt: skip

    sampler = Sampler(SampleConfig(model_path=str(tiny_mochi), lora_path=str(tmp_path / "lora")))
    got = sampler.generate(Request(PROMPT, seed=2, num_inference_steps=3, guidance_scale=1.0, **SMALL))
    pipe = MochiPipeline.from_pretrained(tiny_mochi)
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", 8 / 4)
    expected = pipe(PROMPT, guidance_scale=1.0, num_inference_steps=3, **SMALL,
                    generator=torch.Generator("cpu").manual_seed(2), output_type="latent").frames  # fmt: skip
    without = diffusers_latents(tiny_mochi, steps=3, guidance=1.0, seed=2)
    assert relative_error(got, expected) < 1e-4 and relative_error(got, without) > 1e-3
