"""Wan 2.1 through the same pipeline as Mochi: preprocess, fine-tune, LoRA, distil, export, diffusers.

Each run is a real process on the tiny Wan (``tiny_wan``: 4 blocks, UMT5, the trained tiny Wan
VAE) and the synthetic clips preprocessed for it (``processed_wan``: the conditioning record is
``prompt_embeds`` alone, plus ``null_condition.pt``, the encoded empty prompt that caption dropout
and guidance use). The references are one uninterrupted process; the other layouts must equal them
(losses, gradient norms, exported weights and EMA), as ``test_train.py`` / ``test_lora.py`` /
``test_distill.py`` check for Mochi. What diffusers must reproduce: the exported folder loads in
``WanPipeline``, and the LoRA export, loaded with ``WanPipeline.load_lora_weights``, samples what
fastvideo's validation sampled.

Wan 2.2 A14B (``tiny_wan_a14b``: two experts split at noise level 0.875) trains one expert per run
(``--expert``) on its own noise levels: SP=2 equals one process, the other expert's folder is linked
unchanged, and ``WanPipeline`` samples the exported folder with both experts exactly as fastvideo's
validation did.

Wan 2.1 image-to-video (``tiny_wan_i2v``): preprocessing stores each clip's first-frame
conditioning as ``WanImageToVideoPipeline`` computes it, SP=2 fine-tuning equals one process, and
the pipeline samples the exported folder from that first frame as fastvideo's validation did.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
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
from fastvideo.schedulers import PCMFlowScheduler
from fastvideo.training.lora import read_lora
from fastvideo.training.validation import validation_prompts

pytestmark = pytest.mark.slow
WAN = ["--model_type", "wan"]
# Full fine-tuning validates with guidance, so the unconditional input (the stored empty prompt) is used.
FULL = [*WAN, *B2, "--validation_guidance_scale", 3.0]
BOTH = ("transformer", "transformer_ema")
LAST = f"step-{STEPS:08d}"
LORA = [*WAN, "--use_lora", "--lora_rank", 4, "--lora_alpha", 8, "--lora_base_dtype", "fp32", "--use_ema",
        "--ema_decay", 0.5, "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--checkpointing_steps", 1,
        "--max_train_steps", STEPS, "--validation_steps", STEPS, "--validation_sampling_steps", 3,
        "--lora_comfyui"]  # fmt: skip
PCM = [*WAN, "--num_euler_timesteps", 8, "--multi_phased_distill_schedule",
       "100-2", "--distill_cfg", 3.0, "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--cfg", 0.3,
       "--use_ema", "--checkpointing_steps", 1, "--max_train_steps", 4, "--validation_steps", 4,
       "--validation_step_counts", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def wan_ref(tmp_path_factory, tiny_wan, processed_wan):
    out = tmp_path_factory.mktemp("wan-ref") / "run"
    run(TRAIN, out, tiny_wan, processed_wan, *FULL, "--max_train_steps", STEPS, "--train_batch_size", 2)
    return out


def test_preprocessing_stores_wans_conditioning_record(processed_wan, tiny_wan):
    """Wan's record is the embedding alone (zero past the prompt), and the empty prompt is stored once."""
    from fastvideo.models import get_adapter_class

    prompt = validation_prompts(processed_wan)[0]
    assert set(prompt) == {"caption", "prompt_embeds"} and prompt["prompt_embeds"].shape == (512, 32)
    adapter = get_adapter_class("wan")(tiny_wan)
    adapter.load_text_encoder()

    def stored(text: str) -> torch.Tensor:  # encoded, then kept in --embed_dtype (bf16 by default)
        return adapter.encode_prompts([text])["prompt_embeds"][0].bfloat16().float()

    assert torch.equal(prompt["prompt_embeds"], stored(prompt["caption"]))
    null = load_null_condition(processed_wan)
    assert set(null) == {"prompt_embeds"} and torch.equal(null["prompt_embeds"], stored(""))
    assert null["prompt_embeds"].abs().sum() > 0  # the encoded empty prompt, not zeros (Mochi's null)


def test_killed_sp2_run_resumes_exactly(tmp_path, tiny_wan, processed_wan, wan_ref):
    """kill -9 of an SP=2 run, resumed on SP=2: equals one uninterrupted process (caption dropout to the
    encoded empty prompt, EMA, validation with guidance against it)."""
    out = tmp_path / "run"
    args = [*FULL, "--sp_size", 2, "--train_batch_size", 2]
    step = kill_after_checkpoint(TRAIN, out, tiny_wan, processed_wan, *args, "--max_train_steps", 100,
                                 step=2, nproc=2)  # fmt: skip
    assert 2 <= step < STEPS and not (out / "transformer").exists()
    resume(TRAIN, out, tiny_wan, processed_wan, *args, "--max_train_steps", STEPS, killed_at=step, nproc=2)
    assert len(losses(out)) == STEPS
    assert_same_run(out, wan_ref, names=BOTH)


def test_fsdp2_equals_one_process(tmp_path, tiny_wan, processed_wan, wan_ref):
    out = tmp_path / "run"
    run(TRAIN, out, tiny_wan, processed_wan, *FULL, "--max_train_steps", STEPS, "--train_batch_size", 1,
        nproc=2)  # fmt: skip
    assert_same_run(out, wan_ref, names=BOTH)


def test_export_is_a_wan_pipeline_folder(wan_ref, tiny_wan):
    """The output folder loads in WanPipeline with the trained weights and the base's other components."""
    pipe = WanPipeline.from_pretrained(wan_ref)
    trained = exported(wan_ref)
    state = pipe.transformer.state_dict()
    assert trained.keys() == state.keys()
    for key, value in trained.items():
        torch.testing.assert_close(state[key], value)
    base = WanTransformer3DModel.from_pretrained(tiny_wan / "transformer").state_dict()
    assert any(not torch.equal(base[k], v) for k, v in trained.items()), "training moved no weight"


@pytest.fixture(scope="module")
def wan_lora_ref(tmp_path_factory, tiny_wan, processed_wan):
    out = tmp_path_factory.mktemp("wan-lora-ref") / "run"
    run(TRAIN, out, tiny_wan, processed_wan, *LORA, "--train_batch_size", 2)
    return out


def test_lora_fsdp2_equals_one_process(tmp_path, tiny_wan, processed_wan, wan_lora_ref):
    out = tmp_path / "run"
    run(TRAIN, out, tiny_wan, processed_wan, *LORA, "--train_batch_size", 1, nproc=2)
    assert_same_run(out, wan_lora_ref, names=("lora", "lora_ema"))


def test_exported_lora_in_wan_pipeline_reproduces_fastvideo_sampling(wan_lora_ref, tiny_wan, processed_wan):
    """WanPipeline.load_lora_weights + set_adapters(alpha / rank), Euler on the folder's shift, samples
    what validation sampled with the EMA adapters (the export lora_ema/)."""
    weights, info = read_lora(wan_lora_ref / "lora_ema")
    assert all(k.startswith("transformer.blocks.") for k in weights)
    pipe = WanPipeline.from_pretrained(tiny_wan)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    pipe.load_lora_weights(wan_lora_ref / "lora_ema", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    ours = torch.load(wan_lora_ref / "validation" / LAST / "prompt-00.pt")
    embeds = validation_prompts(processed_wan)[0]["prompt_embeds"][None]
    _, _, t, h, w = ours.shape

    def sample():
        return pipe(prompt_embeds=embeds, num_frames=(t - 1) * 4 + 1, height=h * 8, width=w * 8,
                    num_inference_steps=3, guidance_scale=1.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames  # fmt: skip

    torch.testing.assert_close(ours, sample(), rtol=1e-4, atol=1e-4)
    pipe.set_adapters("fastvideo", 0.0)  # the LoRA matters: without it the result differs
    assert (sample() - ours).abs().max() > 1e-3


def test_comfyui_lora_keys_load_back_through_diffusers(wan_lora_ref, tiny_wan, processed_wan):
    """--lora_comfyui writes lora/comfyui_lora.safetensors under the original Wan names (what ComfyUI
    loads); diffusers' own converter reads it back, alpha included, and at scale 1 it samples what
    fastvideo's export samples at alpha / rank."""
    from safetensors.torch import load_file

    comfy = load_file(wan_lora_ref / "lora" / "comfyui_lora.safetensors")
    weights, info = read_lora(wan_lora_ref / "lora")
    assert len(comfy) == len(weights) // 2 * 3  # down, up and alpha per adapted module
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in comfy
    assert "diffusion_model.blocks.0.cross_attn.o.lora_up.weight" in comfy
    assert float(comfy["diffusion_model.blocks.0.self_attn.q.alpha"]) == info["alpha"]
    embeds = validation_prompts(processed_wan)[0]["prompt_embeds"][None]
    latents = {}
    for name, path, scale in (("ours", wan_lora_ref / "lora", info["alpha"] / info["rank"]),
                              ("comfyui", wan_lora_ref / "lora" / "comfyui_lora.safetensors", 1.0)):  # fmt: skip
        pipe = WanPipeline.from_pretrained(tiny_wan)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
        pipe.load_lora_weights(path, adapter_name="x")
        pipe.set_adapters("x", scale)
        latents[name] = pipe(prompt_embeds=embeds, num_frames=13, height=32, width=48, num_inference_steps=2,
                             guidance_scale=1.0, output_type="latent",
                             generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    torch.testing.assert_close(latents["comfyui"], latents["ours"], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def wan_distilled(tmp_path_factory, tiny_wan, processed_wan):
    out = tmp_path_factory.mktemp("wan-distill") / "run"
    run("fastvideo.distill", out, tiny_wan, processed_wan, *PCM, "--train_batch_size", 2)
    return out


def test_distillation_sp2_equals_one_process(tmp_path, tiny_wan, processed_wan, wan_distilled):
    out = tmp_path / "run"
    run(
        "fastvideo.distill",
        out,
        tiny_wan,
        processed_wan,
        *PCM,
        "--sp_size",
        2,
        "--train_batch_size",
        2,
        nproc=2,
    )
    assert_same_run(out, wan_distilled, names=BOTH)


def test_distilled_folder_samples_in_wan_pipeline_as_validation_did(wan_distilled, processed_wan):
    """The PCM scheduler is saved in Wan's forward-time convention on Wan's schedule, and WanPipeline samples the EMA
    student on its grid exactly as fastvideo's validation did."""
    pipe = WanPipeline.from_pretrained(
        wan_distilled, transformer=WanTransformer3DModel.from_pretrained(wan_distilled / "transformer_ema")
    )
    config = pipe.scheduler.config  # --schedule auto: Wan's own, shifted by the folder's flow shift
    assert isinstance(pipe.scheduler, PCMFlowScheduler) and not config.invert_sigmas
    assert (config.schedule, config.shift) == ("shift", 3.0)
    expected = torch.load(wan_distilled / "validation" / "step-00000004" / "steps-2_cfg-1" / "prompt-00.pt")
    embeds = validation_prompts(processed_wan)[0]["prompt_embeds"][None]
    _, _, t, h, w = expected.shape
    got = pipe(prompt_embeds=embeds, num_frames=(t - 1) * 4 + 1, height=h * 8, width=w * 8,
               num_inference_steps=2, guidance_scale=1.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# The low-noise expert: its validation (guidance 3) samples 2 steps with the high expert first, then it.
EXPERT = [*WAN, *B2, "--expert", "low", "--validation_guidance_scale", 3.0, "--validation_sampling_steps", 3,
          "--max_train_steps", 4, "--validation_steps", 4]  # fmt: skip


# Image-to-video: validation (guidance 3) conditions prompt i on training item i's first frame.
I2V = [*WAN, *B2, "--validation_guidance_scale", 3.0, "--max_train_steps", 3, "--validation_steps", 3]


# Wan's other layouts: (model fixture, data fixture, flags, exported folders) of one reference run each.
VARIANT_RUNS = {
    "a14b-low": ("tiny_wan_a14b", "processed_wan", EXPERT, ("transformer_2", "transformer_2_ema")),
    "i2v": ("tiny_wan_i2v", "processed_wan_i2v", I2V, BOTH),
}


@pytest.fixture(scope="module")
def variant_refs(request, tmp_path_factory):
    """``variant_refs(name)``: the one-process reference run of a VARIANT_RUNS entry, made on first use."""
    made = {}

    def get(name: str):
        if name not in made:
            model, data, args, _ = VARIANT_RUNS[name]
            out = tmp_path_factory.mktemp(name) / "run"
            run(TRAIN, out, request.getfixturevalue(model), request.getfixturevalue(data), *args,
                "--train_batch_size", 2)  # fmt: skip
            made[name] = out
        return made[name]

    return get


@pytest.mark.parametrize("variant", VARIANT_RUNS)
def test_variant_sp2_run_equals_one_process(request, tmp_path, variant_refs, variant):
    """SP=2 equals one process for one expert of the A14B (its validation runs the other expert, whole on
    each rank, under the same SP) and for image-to-video (the image tokens stay whole on every rank)."""
    model, data, args, names = VARIANT_RUNS[variant]
    out = tmp_path / "run"
    run(TRAIN, out, request.getfixturevalue(model), request.getfixturevalue(data), *args, "--sp_size", 2,
        "--train_batch_size", 2, nproc=2)  # fmt: skip
    ref = variant_refs(variant)
    assert_same_run(out, ref, names=names)
    step = f"step-{int(args[args.index('--max_train_steps') + 1]):08d}"
    sampled = [torch.load(d / "validation" / step / "prompt-00.pt") for d in (out, ref)]
    torch.testing.assert_close(*sampled, rtol=1e-4, atol=1e-5)


def test_expert_export_samples_in_wan_pipeline_with_both_experts(variant_refs, tiny_wan_a14b, processed_wan):
    """The output folder is a Wan 2.2 pipeline: the trained transformer_2 (EMA'd in transformer_2_ema), the
    base's transformer linked unchanged, the boundary kept; WanPipeline switches experts at it and samples
    what fastvideo's validation sampled (guidance 3 against the stored empty prompt)."""
    import json

    a14b_low_ref = variant_refs("a14b-low")
    assert json.loads((a14b_low_ref / "model_index.json").read_text())["boundary_ratio"] == 0.875
    assert (a14b_low_ref / "transformer").resolve() == (tiny_wan_a14b / "transformer").resolve()
    base_low = WanTransformer3DModel.from_pretrained(tiny_wan_a14b / "transformer_2").state_dict()
    trained = exported(a14b_low_ref, "transformer_2")
    assert any(not torch.equal(base_low[k], v) for k, v in trained.items()), "training moved no weight"
    pipe = WanPipeline.from_pretrained(
        a14b_low_ref, transformer_2=WanTransformer3DModel.from_pretrained(a14b_low_ref / "transformer_2_ema")
    )
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    ours = torch.load(a14b_low_ref / "validation" / "step-00000004" / "prompt-00.pt")
    embeds = validation_prompts(processed_wan)[0]["prompt_embeds"][None]
    empty = load_null_condition(processed_wan)["prompt_embeds"][None]
    _, _, t, h, w = ours.shape

    def sample():
        return pipe(prompt_embeds=embeds, negative_prompt_embeds=empty, num_frames=(t - 1) * 4 + 1,
                    height=h * 8, width=w * 8, num_inference_steps=3, guidance_scale=3.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames  # fmt: skip

    torch.testing.assert_close(sample(), ours, rtol=1e-4, atol=1e-5)
    pipe.transformer_2 = WanTransformer3DModel.from_pretrained(tiny_wan_a14b / "transformer_2")
    assert (sample() - ours).abs().max() > 1e-3  # the trained low-noise expert took part


def test_expert_noise_levels_stay_on_their_side_of_the_boundary(tiny_wan_a14b):
    from fastvideo.models import get_adapter_class
    from fastvideo.parallel.process_group import DistInfo
    from fastvideo.training.config import TrainConfig
    from fastvideo.training.trainer import Trainer

    drawn = torch.tensor([1e-3, 0.25, 0.5, 0.875, 0.999, 1.0])
    for expert, (low, high) in (("high", (0.875, 1.0)), ("low", (0.0, 0.875))):
        trainer = Trainer(TrainConfig(model_type="wan", model_path=str(tiny_wan_a14b), expert=expert),
                          DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))  # fmt: skip
        trainer.adapter = get_adapter_class("wan")(tiny_wan_a14b, expert=expert)
        sigmas = trainer.in_expert_range(drawn)
        assert bool(((sigmas >= low) & (sigmas <= high)).all()) and bool((sigmas.diff() > 0).all())
        timesteps = sigmas * 1000  # WanPipeline runs transformer/ at timesteps >= 875, transformer_2/ below
        assert bool((timesteps >= 875).all()) if expert == "high" else bool((timesteps[:-1] < 875).all())


@pytest.mark.parametrize(
    "model,args,message",
    [
        ("tiny_wan_a14b", [], "pass --expert high or --expert low"),
        ("tiny_wan", ["--expert", "low"], "holds one DiT"),
        ("tiny_wan_i2v", [], "lacks image_embeds, image_latents"),  # text-to-video latents, I2V model
    ],
)
def test_the_folder_and_data_checked_before_training(request, tmp_path, processed_wan, model, args, message):
    proc = run(
        TRAIN, tmp_path / "run", request.getfixturevalue(model), processed_wan, *WAN, *args, check=False
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_distilling_two_experts_is_refused_with_the_reason(tmp_path, tiny_wan_a14b, processed_wan):
    proc = run("fastvideo.distill", tmp_path / "run", tiny_wan_a14b, processed_wan, *WAN, check=False)
    assert proc.returncode == 2 and "distilling a two-expert folder" in proc.stderr, proc.stderr[-2000:]


def test_expert_lora_loads_into_transformer_2_and_reproduces_validation(
    tmp_path, tiny_wan_a14b, processed_wan
):
    """A LoRA on the low-noise expert is exported as lora_2/: WanPipeline.load_lora_weights(...,
    load_into_transformer_2=True) samples what validation sampled (EMA adapters), and fastvideo's sampler
    on the output folder (lora_2/ into transformer_2/) samples what WanPipeline does with lora_2/."""
    from fastvideo.sample.sampler import Request, SampleConfig, Sampler

    out = tmp_path / "run"
    args = [arg for arg in LORA if arg != "--lora_comfyui"]
    run(TRAIN, out, tiny_wan_a14b, processed_wan, *args, "--expert", "low", "--train_batch_size", 2)
    assert (out / "lora_2").is_dir() and not (out / "lora").exists()
    _, info = read_lora(out / "lora_2")

    def wan_pipeline(lora: str) -> WanPipeline:
        pipe = WanPipeline.from_pretrained(out)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
        pipe.load_lora_weights(out / lora, adapter_name="fastvideo", load_into_transformer_2=True)
        pipe.transformer_2.set_adapters("fastvideo", info["alpha"] / info["rank"])
        return pipe

    ours = torch.load(out / "validation" / LAST / "prompt-00.pt")
    embeds = validation_prompts(processed_wan)[0]["prompt_embeds"][None]
    _, _, t, h, w = ours.shape
    got = wan_pipeline("lora_2_ema")(
        prompt_embeds=embeds, num_frames=(t - 1) * 4 + 1, height=h * 8, width=w * 8, num_inference_steps=3,
        guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip
    torch.testing.assert_close(got, ours, rtol=1e-4, atol=1e-4)
    prompt, small = "a red circle moving right", dict(num_frames=13, height=32, width=48)
    expected = wan_pipeline("lora_2")(
        prompt, negative_prompt="", num_inference_steps=3, guidance_scale=1.0, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(0), **small,
    ).frames  # fmt: skip
    sampler = Sampler(SampleConfig(model_type="wan", model_path=str(out)))
    sampled = sampler.generate(Request(prompt, seed=0, num_inference_steps=3, guidance_scale=1.0, **small))
    torch.testing.assert_close(sampled, expected, rtol=1e-4, atol=1e-5)


def first_frame(processed: Path, item: int = 0):
    """Item ``item``'s first frame, decoded as preprocessing decoded it, as the 8-bit image it stored."""
    import json

    from fastvideo.media.video import FrameSpec, load_media
    from fastvideo.models.wan import WanAdapter

    record = json.loads((processed / "videos2caption.json").read_text())[item]
    spec = FrameSpec(num_frames=13, height=32, width=48, train_fps=30.0)
    clip = load_media(Path(record["media_path"]), spec)
    return WanAdapter.frame_image(clip.frames[:, 0]), record


def test_i2v_preprocessing_stores_the_first_frame_as_the_pipeline_encodes_it(tiny_wan_i2v, processed_wan_i2v):
    from diffusers import WanImageToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    from fastvideo.dataset.latent_dataset import LatentDataset

    image, _ = first_frame(processed_wan_i2v)
    stored = LatentDataset(processed_wan_i2v)[0]["cond"]
    assert set(stored) == {"prompt_embeds", "image_embeds", "image_latents"}
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_wan_i2v)
    expected_embeds = pipe.encode_image(image, "cpu")[0]
    torch.testing.assert_close(
        stored["image_embeds"], expected_embeds.bfloat16().float()
    )  # --embed_dtype bf16
    pixels = VideoProcessor(vae_scale_factor=8).preprocess(image, height=32, width=48)
    noise, condition = pipe.prepare_latents(pixels, 1, 16, 32, 48, 13, torch.float32, "cpu",
                                            torch.Generator().manual_seed(0))  # fmt: skip
    assert condition.shape == (1, 20, 4, 4, 6)  # 4 mask channels, then the first frame's latents
    torch.testing.assert_close(stored["image_latents"], condition[0, 4:], rtol=1e-5, atol=1e-5)
    assert bool((condition[0, :4, 0] == 1).all()) and bool((condition[0, :4, 1:] == 0).all())


def test_i2v_export_samples_in_wan_i2v_pipeline_as_validation_did(variant_refs, processed_wan_i2v):
    """WanImageToVideoPipeline on the output folder (EMA weights), given training item 0's first frame,
    samples what validation sampled for prompt 0 (conditioned on that frame), guidance 3 included."""
    from diffusers import WanImageToVideoPipeline

    i2v_ref = variant_refs("i2v")
    image, _ = first_frame(processed_wan_i2v)
    pipe = WanImageToVideoPipeline.from_pretrained(
        i2v_ref, transformer=WanTransformer3DModel.from_pretrained(i2v_ref / "transformer_ema")
    )
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipe.scheduler.config.flow_shift)
    ours = torch.load(i2v_ref / "validation" / "step-00000003" / "prompt-00.pt")
    embeds = validation_prompts(processed_wan_i2v)[0]["prompt_embeds"][None]
    empty = load_null_condition(processed_wan_i2v)["prompt_embeds"][None]
    encode_image = pipe.encode_image  # the CLIP tokens as stored: in --embed_dtype (bf16)
    pipe.encode_image = lambda *args: encode_image(*args).bfloat16().float()
    got = pipe(image=image, prompt_embeds=embeds, negative_prompt_embeds=empty,
               num_frames=13, height=32, width=48, num_inference_steps=2, guidance_scale=3.0,
               output_type="latent", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    torch.testing.assert_close(got, ours, rtol=1e-4, atol=1e-5)
