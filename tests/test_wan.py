"""Wan 2.1 through the same pipeline as Mochi: preprocess, fine-tune, LoRA, distil, export, diffusers.

Each run is a real process on the tiny Wan (``tiny_wan``: 4 blocks, UMT5, the trained tiny Wan
VAE) and the synthetic clips preprocessed for it (``processed_wan``: the conditioning record is
``prompt_embeds`` alone, plus ``null_condition.pt``, the encoded empty prompt that caption dropout
and guidance use). The references are one uninterrupted process; the other layouts must equal them
(losses, gradient norms, exported weights and EMA), as ``test_train.py`` / ``test_lora.py`` /
``test_distill.py`` check for Mochi. What diffusers must reproduce: the exported folder loads in
``WanPipeline``, and the LoRA export, loaded with ``WanPipeline.load_lora_weights``, samples what
fastvideo's validation sampled.
"""

from __future__ import annotations

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
