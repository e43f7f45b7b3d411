"""CogVideoX through the same core as Mochi and Wan: DDPM v-prediction carried in flow terms.

What must hold, on the tiny CogVideoX (``tiny_cogvideox``: 5B's layout, rotary positions;
``tiny_cogvideox_2b``: 2B's sinusoidal positions and SNR shift 3; ``tiny_cogvideox_i2v``: 5B-I2V;
``tiny_cogvideox_15``: 1.5's temporal patch 2):

* fastvideo's sampler equals ``CogVideoXPipeline`` (``CogVideoXImageToVideoPipeline``) for the same seed
  with its DDIM scheduler (our Euler on the DDIM timesteps' noise levels) and its DPM scheduler
  (stepped natively, noise drawn as the pipeline draws it);
* the training loss is exactly the v-prediction loss of diffusers' ``train_cogvideox_lora.py``;
* SP=2 (killed with SIGKILL and resumed), FSDP2, LoRA SP=2 and image-to-video SP=2 runs equal one
  process (HSDP: ``test_families.py``); the exported folder and the LoRA export sample in
  ``CogVideoXPipeline`` what fastvideo's validation sampled;
* distillation is refused with the reason.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from PIL import Image
from runs import (
    ADAM_EPS,
    B2,
    STEPS,
    TRAIN,
    assert_same_run,
    exported,
    kill_after_checkpoint,
    losses,
    resume,
    run,
)

from fastvideo.dataset.layout import load_null_condition
from fastvideo.models.cogvideox import CogVideoXAdapter, rotary_tables
from fastvideo.sample.sampler import Request, SampleConfig, Sampler
from fastvideo.training.flow_matching import add_noise
from fastvideo.training.lora import read_lora
from fastvideo.training.objectives import VPrediction
from fastvideo.training.validation import validation_prompts

COG = ["--model_type", "cogvideox"]
# Validation with guidance 3, so the unconditional input (the stored empty prompt) is used; 2 DDIM steps.
FULL = [*COG, *B2, "--validation_guidance_scale", 3.0]
BOTH = ("transformer", "transformer_ema")
LAST = f"step-{STEPS:08d}"
LORA = [*COG, "--use_lora", "--lora_rank", 4, "--lora_alpha", 8, "--lora_base_dtype", "fp32", "--use_ema",
        "--ema_decay", 0.5, "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--checkpointing_steps", 1,
        "--max_train_steps", 3, "--validation_steps", 3, "--validation_sampling_steps", 2]  # fmt: skip
PROMPT = "a red circle moving right"
SMALL = dict(num_frames=13, height=32, width=48)


def pipeline_latents(
    folder, scheduler: str, steps: int, guidance: float, seed: int, image=None
) -> torch.Tensor:
    """CogVideoXPipeline's (CogVideoXImageToVideoPipeline's, with ``image``) final latents in fastvideo's
    layout [B, C, T, H, W]."""
    pipe = (CogVideoXImageToVideoPipeline if image else CogVideoXPipeline).from_pretrained(folder)
    if scheduler == "dpm":
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    extra = {"image": Image.open(image).convert("RGB")} if image else {}
    frames = pipe(prompt=PROMPT, guidance_scale=guidance, num_inference_steps=steps, **SMALL, output_type="latent",
                  generator=torch.Generator().manual_seed(seed), **extra).frames  # fmt: skip
    return frames.permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory) -> str:
    """An image file of another size than the videos (the pipelines resize it)."""
    path = tmp_path_factory.mktemp("image") / "first.png"
    pixels = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("model", "scheduler"),
    [("tiny_cogvideox", "euler"), ("tiny_cogvideox", "dpm"), ("tiny_cogvideox_2b", "euler"),
     ("tiny_cogvideox_i2v", "euler"), ("tiny_cogvideox_i2v", "dpm"), ("tiny_cogvideox_15", "euler")],
    ids=["5b-ddim", "5b-dpm", "2b-ddim", "i2v-ddim", "i2v-dpm", "1.5-ddim"],
)  # fmt: skip
def test_sampler_equals_cogvideox_pipeline(request, first_frame, model, scheduler):
    """Euler on the DDIM timesteps' noise levels is the pipeline's DDIM; ``dpm`` steps the pipeline's own
    (stochastic) DPM scheduler with the seed's generator. Guidance 6 against the empty prompt, 4 steps.
    Image-to-video draws the first frame's latents from the VAE posterior with the same generator first,
    as CogVideoXImageToVideoPipeline does."""
    folder = request.getfixturevalue(model)
    image = first_frame if model.endswith("i2v") else ""
    sampler = Sampler(SampleConfig(model_type="cogvideox", model_path=str(folder)))
    ours = sampler.generate(
        Request(PROMPT, seed=3, num_inference_steps=4, guidance_scale=6.0, scheduler_type=scheduler, image=image,
                **SMALL)
    )  # fmt: skip
    expected = pipeline_latents(folder, "dpm" if scheduler == "dpm" else "ddim", 4, 6.0, seed=3, image=image)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert ours.abs().max() > 1.0  # not a trivially small result


def test_training_loss_is_diffusers_v_prediction_loss(tiny_cogvideox):
    """fastvideo's loss at a timestep equals train_cogvideox_lora.py's: the scheduler's add_noise, the DiT's
    output turned into x0 by get_velocity, and the x0 error weighted by 1 / (1 - alphas_cumprod[t])."""
    adapter = CogVideoXAdapter(tiny_cogvideox)
    transformer = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox / "transformer")
    scheduler = CogVideoXDDIMScheduler.from_pretrained(tiny_cogvideox / "scheduler")
    gen = torch.Generator().manual_seed(0)
    latents, noise = (torch.randn(3, 16, 4, 4, 6, generator=gen) for _ in range(2))
    cond = {"prompt_embeds": torch.randn(3, 226, 32, generator=gen)}
    timesteps = torch.tensor([5, 500, 999])

    sigmas = adapter.noise_levels().sigma(timesteps)
    with torch.no_grad():
        pred = adapter.predict_velocity(transformer, add_noise(latents, noise, sigmas), sigmas, cond)
    objective = VPrediction(adapter, type("Flags", (), {"weighting_scheme": "uniform", "logit_mean": 0.0,
                                                        "logit_std": 1.0, "mode_scale": 1.29, "shift": 1.0}))  # fmt: skip
    ours = objective.loss(pred, latents, noise, sigmas)

    frames_first = (latents.permute(0, 2, 1, 3, 4), noise.permute(0, 2, 1, 3, 4))
    noisy = scheduler.add_noise(*frames_first, timesteps)
    with torch.no_grad():
        out = transformer(hidden_states=noisy, encoder_hidden_states=cond["prompt_embeds"], timestep=timesteps,
                          image_rotary_emb=rotary_tables(transformer.config, 4, 4, 6, "cpu"), return_dict=False)[0]  # fmt: skip
    x0 = scheduler.get_velocity(out, noisy, timesteps)
    weights = (1 / (1 - scheduler.alphas_cumprod[timesteps])).float().view(-1, 1, 1, 1, 1)
    theirs = (weights * (x0 - frames_first[0]) ** 2).flatten(1).mean(1).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=0)
    # Training draws integer timesteps: the adapter hands the DiT the very integers diffusers' script draws.
    drawn = torch.cat([adapter.training_sigmas(torch.Generator().manual_seed(i)) for i in range(8)])
    assert torch.equal(
        adapter.noise_levels().timesteps(drawn), adapter.noise_levels().timesteps(drawn).round()
    )


def test_preprocessing_stores_cogvideox_record(processed_cogvideox, tiny_cogvideox):
    """The record is the T5 embedding of all 226 tokens; the empty prompt (the pipeline's default negative
    prompt) is stored once as the unconditional input."""
    prompt = validation_prompts(processed_cogvideox)[0]
    assert set(prompt) == {"caption", "prompt_embeds"} and prompt["prompt_embeds"].shape == (226, 32)
    adapter = CogVideoXAdapter(tiny_cogvideox)
    adapter.load_text_encoder()

    def stored(text: str) -> torch.Tensor:  # encoded, then kept in --embed_dtype (bf16 by default)
        return adapter.encode_prompts([text])["prompt_embeds"][0].bfloat16().float()

    assert torch.equal(prompt["prompt_embeds"], stored(prompt["caption"]))
    null = load_null_condition(processed_cogvideox)
    assert set(null) == {"prompt_embeds"} and torch.equal(null["prompt_embeds"], stored(""))


@pytest.fixture(scope="module")
def cog_ref(tmp_path_factory, tiny_cogvideox, processed_cogvideox):
    out = tmp_path_factory.mktemp("cog-ref") / "run"
    run(TRAIN, out, tiny_cogvideox, processed_cogvideox, *FULL, "--max_train_steps", STEPS,
        "--train_batch_size", 2)  # fmt: skip
    return out


@pytest.mark.slow
def test_killed_sp2_run_resumes_exactly(tmp_path, tiny_cogvideox, processed_cogvideox, cog_ref):
    """kill -9 of an SP=2 run (the joint text+video attention split over 2 ranks), resumed on SP=2: equals
    one uninterrupted process (losses, grad norms, weights, EMA, validation with guidance)."""
    out = tmp_path / "run"
    args = [*FULL, "--sp_size", 2, "--train_batch_size", 2]
    step = kill_after_checkpoint(TRAIN, out, tiny_cogvideox, processed_cogvideox, *args, "--max_train_steps",
                                 100, step=2, nproc=2)  # fmt: skip
    assert 2 <= step < STEPS and not (out / "transformer").exists()
    resume(TRAIN, out, tiny_cogvideox, processed_cogvideox, *args, "--max_train_steps", STEPS, killed_at=step,
           nproc=2)  # fmt: skip
    assert len(losses(out)) == STEPS
    assert_same_run(out, cog_ref, names=BOTH)
    sampled = [torch.load(d / "validation" / LAST / "prompt-00.pt") for d in (out, cog_ref)]
    torch.testing.assert_close(*sampled, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_equals_one_process(tmp_path, tiny_cogvideox, processed_cogvideox, cog_ref):
    out = tmp_path / "run"
    run(TRAIN, out, tiny_cogvideox, processed_cogvideox, *FULL, "--max_train_steps", STEPS,
        "--train_batch_size", 1, nproc=2)  # fmt: skip
    assert_same_run(out, cog_ref, names=BOTH)


def test_export_samples_in_cogvideox_pipeline_as_validation_did(cog_ref, tiny_cogvideox, processed_cogvideox):
    """The output folder is a CogVideoX pipeline with the trained weights; its DDIM scheduler, guidance 3
    against the empty prompt, samples the EMA weights exactly as fastvideo's validation did."""
    pipe = CogVideoXPipeline.from_pretrained(
        cog_ref, transformer=CogVideoXTransformer3DModel.from_pretrained(cog_ref / "transformer_ema")
    )
    assert isinstance(pipe.scheduler, CogVideoXDDIMScheduler)
    base = CogVideoXTransformer3DModel.from_pretrained(tiny_cogvideox / "transformer").state_dict()
    assert any(not torch.equal(base[k], v) for k, v in exported(cog_ref).items()), "training moved no weight"
    ours = torch.load(cog_ref / "validation" / LAST / "prompt-00.pt")
    embeds = validation_prompts(processed_cogvideox)[0]["prompt_embeds"][None]
    negative = load_null_condition(processed_cogvideox)["prompt_embeds"][None]
    _, _, t, h, w = ours.shape
    got = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_frames=(t - 1) * 4 + 1, height=h * 8,
               width=w * 8, num_inference_steps=2, guidance_scale=3.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    torch.testing.assert_close(got.permute(0, 2, 1, 3, 4), ours, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cog_lora_ref(tmp_path_factory, tiny_cogvideox, processed_cogvideox):
    out = tmp_path_factory.mktemp("cog-lora-ref") / "run"
    run(TRAIN, out, tiny_cogvideox, processed_cogvideox, *LORA, "--train_batch_size", 2)
    return out


@pytest.mark.slow
def test_lora_sp2_equals_one_process(tmp_path, tiny_cogvideox, processed_cogvideox, cog_lora_ref):
    out = tmp_path / "run"
    run(TRAIN, out, tiny_cogvideox, processed_cogvideox, *LORA, "--sp_size", 2, "--train_batch_size", 2,
        nproc=2)  # fmt: skip
    assert_same_run(out, cog_lora_ref, names=("lora", "lora_ema"))


def test_exported_lora_in_cogvideox_pipeline_reproduces_fastvideo_sampling(
    cog_lora_ref, tiny_cogvideox, processed_cogvideox
):
    """CogVideoXPipeline.load_lora_weights + set_adapters(alpha / rank), DDIM, samples what validation
    sampled with the EMA adapters (lora_ema/); without the adapters the result differs."""
    weights, info = read_lora(cog_lora_ref / "lora_ema")
    assert weights and all(k.startswith("transformer.transformer_blocks.") for k in weights)
    pipe = CogVideoXPipeline.from_pretrained(tiny_cogvideox)
    pipe.load_lora_weights(cog_lora_ref / "lora_ema", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    ours = torch.load(cog_lora_ref / "validation" / "step-00000003" / "prompt-00.pt")
    embeds = validation_prompts(processed_cogvideox)[0]["prompt_embeds"][None]
    _, _, t, h, w = ours.shape

    def sample() -> torch.Tensor:
        frames = pipe(prompt_embeds=embeds, num_frames=(t - 1) * 4 + 1, height=h * 8, width=w * 8,
                      num_inference_steps=2, guidance_scale=1.0, output_type="latent",
                      generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
        return frames.permute(0, 2, 1, 3, 4)

    torch.testing.assert_close(sample(), ours, rtol=1e-4, atol=1e-5)
    pipe.set_adapters("fastvideo", 0.0)
    assert (sample() - ours).abs().max() > 1e-3


def test_distillation_is_refused_with_the_reason(tmp_path, tiny_cogvideox, processed_cogvideox, cli_env):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fastvideo.distill", *COG, "--model_path", str(tiny_cogvideox),
         "--data_json_path", str(processed_cogvideox), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "distilling cogvideox is not implemented yet" in result.stderr and "v_prediction" in result.stderr
    assert "Traceback" not in result.stderr


# Image-to-video: validation (guidance 3) conditions prompt i on training item i's first frame.
I2V = [*COG, *B2, "--validation_guidance_scale", 3.0, "--max_train_steps", 3, "--validation_steps", 3]


def test_i2v_preprocessing_stores_the_first_frames_latents(processed_cogvideox_i2v, tiny_cogvideox_i2v):
    """Each clip's image_latents: its first frame (the 8-bit image it was decoded from) encoded alone, the
    posterior mode scaled by the VAE's factor, then zero frames: the pipeline's layout, without its draw."""
    from fastvideo.dataset.latent_dataset import LatentDataset
    from fastvideo.media.video import FrameSpec, load_media

    dataset = LatentDataset(processed_cogvideox_i2v)
    stored = dataset[0]["cond"]["image_latents"]
    assert stored.shape == (16, 4, 4, 6) and stored[:, 1:].abs().sum() == 0 and stored[:, 0].abs().sum() > 0
    adapter = CogVideoXAdapter(tiny_cogvideox_i2v)
    spec = FrameSpec(num_frames=13, height=32, width=48, train_fps=30.0)
    clip = load_media(dataset.records[0]["media_path"], spec)
    image = adapter.frame_image(clip.frames[:, 0])
    expected = adapter.encode_first_frames(adapter.load_vae(), [image], 13, 32, 48)["image_latents"][0]
    torch.testing.assert_close(stored, expected.to(stored.dtype))


@pytest.mark.slow
def test_i2v_sp2_run_equals_one_process(tmp_path, tiny_cogvideox_i2v, processed_cogvideox_i2v):
    """Image-to-video fine-tuning: the first frame's latents concatenated on channels; SP=2 equals one
    process (losses, weights, EMA, validation latents conditioned on the training items' first frames)."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    run(TRAIN, ref, tiny_cogvideox_i2v, processed_cogvideox_i2v, *I2V, "--train_batch_size", 2)
    run(TRAIN, out, tiny_cogvideox_i2v, processed_cogvideox_i2v, *I2V, "--sp_size", 2, "--train_batch_size", 2,
        nproc=2)  # fmt: skip
    assert_same_run(out, ref, names=BOTH)
    sampled = [torch.load(d / "validation" / "step-00000003" / "prompt-00.pt") for d in (out, ref)]
    torch.testing.assert_close(*sampled, rtol=1e-4, atol=1e-5)
