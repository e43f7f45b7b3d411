"""HunyuanVideo through the same pipeline as Mochi and Wan: sample, preprocess, fine-tune, LoRA, distil.

The tiny HunyuanVideo (``tiny_hunyuan``: 2 dual-stream + 2 single-stream blocks of 4 heads, a tiny
Llama and CLIP text tower, a random VAE) and the synthetic clips preprocessed for it
(``processed_hunyuan``: the record is ``prompt_embeds``, ``prompt_attention_mask`` and
``pooled_prompt_embeds``, plus ``null_condition.pt``, the encoded empty prompt). What diffusers must
reproduce: fastvideo's sampler equals ``HunyuanVideoPipeline`` (its embedded guidance 6, with and
without true CFG), preprocessing stores what the pipeline's ``encode_prompt`` computes, and a LoRA
export loaded with ``HunyuanVideoPipeline.load_lora_weights`` samples what fastvideo's validation
sampled. The references are one uninterrupted process; SP=2 (both block kinds split, text replicated)
and FSDP2 runs must equal them (losses, gradient norms, exported weights and EMA).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
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
from fastvideo.models import get_adapter_class
from fastvideo.models.tiny import TINY_HUNYUAN_DIT
from fastvideo.sample.sampler import Request, SampleConfig, Sampler
from fastvideo.schedulers import PCMFlowScheduler
from fastvideo.training.lora import read_lora
from fastvideo.training.validation import validation_prompts

HUNYUAN = ["--model_type", "hunyuan"]
# Full fine-tuning validates with true CFG against the stored empty prompt (embedded guidance 6 throughout).
FULL = [*HUNYUAN, *B2, "--validation_guidance_scale", 3.0]
BOTH = ("transformer", "transformer_ema")
LAST = f"step-{STEPS:08d}"
LORA = [*HUNYUAN, "--use_lora", "--lora_rank", 4, "--lora_alpha", 8, "--lora_base_dtype", "fp32",
        "--use_ema", "--ema_decay", 0.5, "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS,
        "--max_train_steps", STEPS, "--validation_steps", STEPS, "--validation_sampling_steps", 3]  # fmt: skip
# FastHunyuan's recipe (FastVideo's distill_hunyuan.sh): no true CFG in the teacher's solver
# (--not_apply_cfg_solver) and no caption dropout, the embedded guidance doing the guiding; 6 steps.
PCM = [*HUNYUAN, "--num_euler_timesteps", 12, "--multi_phased_distill_schedule", "100-6", "--not_apply_cfg_solver",
       "--cfg", 0.0, "--learning_rate", "1e-3", "--adam_eps", ADAM_EPS, "--use_ema", "--checkpointing_steps", 1,
       "--max_train_steps", 4, "--validation_steps", 4, "--validation_step_counts", "6"]  # fmt: skip
PROMPT = "a red circle moving right"
SMALL = dict(num_frames=13, height=32, width=48)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def record(cond: dict) -> dict:
    """HunyuanVideoPipeline's keyword arguments for one stored conditioning record (no batch dim)."""
    return {k: cond[k][None] for k in ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")}


@pytest.mark.parametrize("true_cfg", [1.0, 3.0], ids=["embedded-guidance", "true-cfg"])
def test_sampler_equals_hunyuan_pipeline(tiny_hunyuan, true_cfg):
    """The sampler's default (embedded guidance 6, no true CFG) is HunyuanVideoPipeline's default; its
    guidance_scale is the pipeline's true_cfg_scale. Same seed and steps, same final latents."""
    sampler = Sampler(SampleConfig(model_type="hunyuan", model_path=str(tiny_hunyuan)))
    guidance = None if true_cfg == 1.0 else true_cfg
    got = sampler.generate(Request(PROMPT, seed=3, num_inference_steps=4, guidance_scale=guidance, **SMALL))
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_hunyuan)
    expected = pipe(PROMPT, negative_prompt="", true_cfg_scale=true_cfg, num_inference_steps=4,
                    generator=torch.Generator("cpu").manual_seed(3), output_type="latent", **SMALL).frames  # fmt: skip
    assert got.shape == expected.shape == (1, 16, 4, 4, 6)
    assert relative_error(got, expected) < 1e-5
    other = pipe(PROMPT, guidance_scale=1.0, true_cfg_scale=true_cfg, negative_prompt="", num_inference_steps=4,
                 generator=torch.Generator("cpu").manual_seed(3), output_type="latent", **SMALL).frames  # fmt: skip
    assert relative_error(got, other) > 1e-2  # the embedded guidance reaches the DiT


def test_preprocessing_stores_the_pipelines_conditioning_record(processed_hunyuan, tiny_hunyuan):
    """The stored record is encode_prompt's (template cropped, 256 tokens, right-padded mask, CLIP's pooled
    output) in --embed_dtype, and the empty prompt's record is stored once."""
    prompt = validation_prompts(processed_hunyuan)[0]
    assert set(prompt) == {"caption", "prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"}
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_hunyuan)

    def expected(text: str) -> dict:
        embeds, pooled, mask = pipe.encode_prompt(text, device="cpu")
        return {"prompt_embeds": embeds[0].bfloat16().float(), "prompt_attention_mask": mask[0].bool(),
                "pooled_prompt_embeds": pooled[0].bfloat16().float()}  # fmt: skip

    for got, text in ((prompt, prompt["caption"]), (load_null_condition(processed_hunyuan), "")):
        want = expected(text)
        assert got.keys() - {"caption"} == want.keys()
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    mask = prompt["prompt_attention_mask"]
    assert mask.shape == (256,) and 0 < int(mask.sum()) < 256 and bool(mask[: int(mask.sum())].all())


def test_latents_are_scaled_as_the_pipeline_unscales_them(tiny_hunyuan):
    """encode_video scales the posterior mode by the VAE's scaling_factor; decode_latents is the pipeline's
    decode (latents / scaling_factor through the VAE)."""
    adapter = get_adapter_class("hunyuan")(tiny_hunyuan)
    vae = adapter.load_vae()
    video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = adapter.encode_video(vae, video)
    assert latents.shape == (1, 16, 3, 4, 6)
    torch.testing.assert_close(latents, vae.encode(video).latent_dist.mode() * vae.config.scaling_factor)
    decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)
    torch.testing.assert_close(adapter.decode_latents(vae, latents), decoded)


@pytest.fixture(scope="module")
def hunyuan_ref(tmp_path_factory, tiny_hunyuan, processed_hunyuan):
    out = tmp_path_factory.mktemp("hunyuan-ref") / "run"
    run(
        TRAIN,
        out,
        tiny_hunyuan,
        processed_hunyuan,
        *FULL,
        "--max_train_steps",
        STEPS,
        "--train_batch_size",
        2,
    )
    return out


def same_validation(out, ref) -> None:
    """The last validation's samples (true CFG 3 against the stored empty prompt) are the reference's."""
    sampled = [torch.load(d / "validation" / LAST / "prompt-00.pt") for d in (out, ref)]
    torch.testing.assert_close(*sampled, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_equals_one_process(tmp_path, tiny_hunyuan, processed_hunyuan, hunyuan_ref):
    """FSDP2 over 2 ranks (one sample each; both block lists are FSDP units) equals one process."""
    out = tmp_path / "run"
    run(TRAIN, out, tiny_hunyuan, processed_hunyuan, *FULL, "--max_train_steps", STEPS, "--train_batch_size", 1,
        nproc=2)  # fmt: skip
    assert_same_run(out, hunyuan_ref, names=BOTH)
    same_validation(out, hunyuan_ref)


@pytest.mark.slow
def test_killed_sp2_run_resumes_exactly(tmp_path, tiny_hunyuan, processed_hunyuan, hunyuan_ref):
    """SP=2 (video tokens split through both block kinds, text replicated), killed with -9 after checkpoint 2
    and resumed on SP=2: equals one uninterrupted process (losses, grad norms, weights, EMA, validation)."""
    out = tmp_path / "run"
    args = [*FULL, "--sp_size", 2, "--train_batch_size", 2]
    step = kill_after_checkpoint(TRAIN, out, tiny_hunyuan, processed_hunyuan, *args, "--max_train_steps", 100,
                                 step=2, nproc=2)  # fmt: skip
    assert 2 <= step < STEPS and not (out / "transformer").exists()
    resume(
        TRAIN,
        out,
        tiny_hunyuan,
        processed_hunyuan,
        *args,
        "--max_train_steps",
        STEPS,
        killed_at=step,
        nproc=2,
    )
    assert len(losses(out)) == STEPS
    assert_same_run(out, hunyuan_ref, names=BOTH)
    same_validation(out, hunyuan_ref)


@pytest.mark.slow
def test_export_samples_in_hunyuan_pipeline_as_validation_did(hunyuan_ref, tiny_hunyuan, processed_hunyuan):
    """The output folder is a HunyuanVideoPipeline folder with the trained (EMA) DiT; the pipeline with
    true CFG 3 against the stored empty prompt samples what fastvideo's validation sampled."""
    pipe = HunyuanVideoPipeline.from_pretrained(
        hunyuan_ref,
        transformer=HunyuanVideoTransformer3DModel.from_pretrained(hunyuan_ref / "transformer_ema"),
    )
    base = HunyuanVideoTransformer3DModel.from_pretrained(tiny_hunyuan / "transformer").state_dict()
    assert any(not torch.equal(base[k], v) for k, v in exported(hunyuan_ref).items()), (
        "training moved no weight"
    )
    ours = torch.load(hunyuan_ref / "validation" / LAST / "prompt-00.pt")
    negative = {f"negative_{k}": v for k, v in record(load_null_condition(processed_hunyuan)).items()}
    got = pipe(**record(validation_prompts(processed_hunyuan)[0]), **negative, true_cfg_scale=3.0,
               num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0),
               **SMALL).frames  # fmt: skip
    torch.testing.assert_close(got, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_exported_lora_in_hunyuan_pipeline_reproduces_fastvideo_sampling(
    tmp_path, tiny_hunyuan, processed_hunyuan
):
    """HunyuanVideoPipeline.load_lora_weights + set_adapters(alpha / rank) samples what validation sampled
    with the EMA adapters (lora_ema/), in the dual- and single-stream blocks; without the LoRA it differs."""
    out = tmp_path / "run"
    run(TRAIN, out, tiny_hunyuan, processed_hunyuan, *LORA, "--train_batch_size", 2)
    weights, info = read_lora(out / "lora_ema")
    assert any(".single_transformer_blocks." in k for k in weights)
    assert any(".add_q_proj." in k for k in weights) and not any("context_embedder" in k for k in weights)
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_hunyuan)
    pipe.load_lora_weights(out / "lora_ema", adapter_name="fastvideo")
    pipe.set_adapters("fastvideo", info["alpha"] / info["rank"])
    ours = torch.load(out / "validation" / LAST / "prompt-00.pt")

    def sample():
        return pipe(**record(validation_prompts(processed_hunyuan)[0]), num_inference_steps=3,
                    output_type="latent", generator=torch.Generator().manual_seed(0), **SMALL).frames  # fmt: skip

    torch.testing.assert_close(sample(), ours, rtol=1e-4, atol=1e-4)
    pipe.set_adapters("fastvideo", 0.0)
    assert (sample() - ours).abs().max() > 1e-3


@pytest.fixture(scope="module")
def hunyuan_distilled(tmp_path_factory, tiny_hunyuan, processed_hunyuan):
    out = tmp_path_factory.mktemp("hunyuan-distill") / "run"
    run("fastvideo.distill", out, tiny_hunyuan, processed_hunyuan, *PCM, "--train_batch_size", 2)
    return out


@pytest.mark.slow
def test_distillation_sp2_equals_one_process(tmp_path, tiny_hunyuan, processed_hunyuan, hunyuan_distilled):
    """PCM with SP=2 over the dual- and single-stream blocks: losses, weights and EMA of one process."""
    out = tmp_path / "run"
    run("fastvideo.distill", out, tiny_hunyuan, processed_hunyuan, *PCM, "--sp_size", 2, "--train_batch_size", 2,
        nproc=2)  # fmt: skip
    assert_same_run(out, hunyuan_distilled, names=("transformer", "transformer_ema"))


def test_distilled_folder_samples_in_hunyuan_pipeline_as_validation_did(hunyuan_distilled, processed_hunyuan):
    """PCM distillation to 6 steps (6 phases, FastHunyuan's count): the folder's PCM scheduler is on
    HunyuanVideo's shifted schedule in its forward-time convention, and HunyuanVideoPipeline (embedded
    guidance 6) samples the EMA student in 6 steps as fastvideo's validation did."""
    out = hunyuan_distilled
    assert len(losses(out)) == 4 and all(loss > 0 for loss in losses(out))
    pipe = HunyuanVideoPipeline.from_pretrained(
        out, transformer=HunyuanVideoTransformer3DModel.from_pretrained(out / "transformer_ema")
    )
    config = pipe.scheduler.config
    assert isinstance(pipe.scheduler, PCMFlowScheduler) and not config.invert_sigmas
    assert (config.schedule, config.shift) == ("shift", 7.0)
    expected = torch.load(out / "validation" / "step-00000004" / "steps-6_cfg-1" / "prompt-00.pt")
    got = pipe(**record(validation_prompts(processed_hunyuan)[0]), num_inference_steps=6, output_type="latent",
               generator=torch.Generator().manual_seed(0), **SMALL).frames  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_adapter_declares_both_block_lists_and_refuses_without_the_empty_prompt(tiny_hunyuan):
    adapter = get_adapter_class("hunyuan")(tiny_hunyuan)
    transformer = HunyuanVideoTransformer3DModel.from_pretrained(tiny_hunyuan / "transformer")
    assert len(adapter.blocks(transformer)) == 4  # 2 dual-stream + 2 single-stream
    assert (adapter.embedded_guidance_scale, adapter.sampling.guidance_scale) == (6.0, 1.0)
    with pytest.raises(ValueError, match="encoded empty prompt"):
        adapter.null_condition({"prompt_embeds": torch.zeros(1, 256, 32)}, None)


# --- SP == one process at the module level: padding, per-sample text masks, checkpointing ------------


def _sp_worker(rank: int, port: int, out_file: str) -> None:
    """Rank ``rank`` of 2: the tiny DiT with Ulysses SP against the plain one, forward and backward, on 9
    video tokens (padded to 10) and two prompts of different lengths; once plain, once with diffusers'
    gradient checkpointing over both block lists."""
    import torch.distributed as dist

    from fastvideo.models.hunyuan import HunyuanVideoAdapter
    from fastvideo.models.hunyuan_sp import enable_hunyuan_sequence_parallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[0, :5], mask[1, :17] = True, True
    cond = {"prompt_embeds": torch.randn(2, 256, 32, generator=gen), "prompt_attention_mask": mask,
            "pooled_prompt_embeds": torch.randn(2, 32, generator=gen)}  # fmt: skip
    latents, sigmas = torch.randn(2, 16, 3, 6, 2, generator=gen), torch.tensor([0.8, 0.3])
    adapter = HunyuanVideoAdapter(out_file)  # predict_velocity reads no file
    results = {}
    for case in ("plain", "checkpointed"):
        models = []
        for sp in (False, True):
            torch.manual_seed(0)
            model = HunyuanVideoTransformer3DModel(**TINY_HUNYUAN_DIT)
            if sp:
                enable_hunyuan_sequence_parallel(model, dist.group.WORLD)
            if case == "checkpointed":
                model.enable_gradient_checkpointing()
            out = adapter.predict_velocity(model, latents, sigmas, cond)
            out.square().mean().backward()
            models.append((model, out.detach()))
        (ref, ref_out), (sp_model, sp_out) = models
        processors = {type(m.processor).__name__ for m in sp_model.modules() if hasattr(m, "processor")}
        grads = []
        for (name, p), (_, q) in zip(ref.named_parameters(), sp_model.named_parameters(), strict=True):
            mean = q.grad.clone()
            dist.all_reduce(mean)
            grads.append((name, p.grad, mean / 2))
        scale = max(float(g.abs().max()) for _, g, _ in grads)
        results[case] = {
            "out": float((sp_out - ref_out).norm() / ref_out.norm()),
            # Per parameter, relative to the largest gradient: a gradient that is exactly zero in exact
            # arithmetic (the refiner's key bias: softmax is shift-invariant) is rounding noise on both sides.
            "grad": max(
                float((m - g).abs().max()) / max(float(g.abs().max()), 1e-3 * scale) for _, g, m in grads
            ),
            "processors": sorted(processors),
        }
    if rank == 0:
        Path(out_file).write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_sp_equals_one_process_with_padding_masks_and_checkpointing(tmp_path):
    out_file = tmp_path / "sp.json"
    torch.multiprocessing.spawn(_sp_worker, args=(_free_port(), str(out_file)), nprocs=2, join=True)
    for case, res in json.loads(out_file.read_text()).items():
        assert res["out"] < 1e-5 and res["grad"] < 1e-4, (case, res)
        # the joint attention of both block kinds; the token refiner keeps diffusers' processor
        assert res["processors"] == ["AttnProcessor2_0", "HunyuanUlyssesAttnProcessor"], res


# --- image-to-video (HunyuanVideoImageToVideoPipeline, token_replace) ----------------------------------
# Validation (true CFG 3 against the empty prompt with a black image) conditions prompt i on the first frame
# preprocessing encoded it with.
I2V = [*HUNYUAN, *B2, "--validation_guidance_scale", 3.0, "--max_train_steps", 3, "--validation_steps", 3]


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory) -> str:
    """An image file of another size than the videos (the pipeline resizes it, Llava's processor too)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "first.png"
    pixels = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(path)
    return str(path)


def test_i2v_sampler_equals_hunyuan_i2v_pipeline(tiny_hunyuan_i2v, first_frame):
    """--image: Llava encodes the prompt with the image (the pipeline's default template, 576 image tokens,
    every 4th kept), the image's latents replace the first frame, sampling starts from 0.999 noise + 0.001
    image latents; embedded guidance 6. Same seed, same final latents, the first frame the image's.
    (diffusers 0.42.1's true_cfg_scale encodes its negative with every 2nd image token, which the DiT was
    not trained with; fastvideo's true CFG keeps every 4th, so only the default is compared.)"""
    from diffusers import HunyuanVideoImageToVideoPipeline
    from PIL import Image

    sampler = Sampler(SampleConfig(model_type="hunyuan", model_path=str(tiny_hunyuan_i2v)))
    got = sampler.generate(Request(PROMPT, seed=3, num_inference_steps=4, image=first_frame, **SMALL))
    pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(tiny_hunyuan_i2v)
    expected = pipe(image=Image.open(first_frame).convert("RGB"), prompt=PROMPT, guidance_scale=6.0,
                    num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(3), output_type="latent",
                    **SMALL).frames  # fmt: skip
    assert got.shape == expected.shape == (1, 16, 4, 4, 6)
    assert relative_error(got, expected) < 1e-5
    image = sampler.first_frame(Request(PROMPT, image=first_frame, **SMALL))["image_latents"]
    torch.testing.assert_close(got[:, :, :1], image, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="image-to-video"):
        sampler.generate(Request(PROMPT, num_inference_steps=1, **SMALL))


def test_i2v_preprocessing_stores_the_pipelines_conditioning(processed_hunyuan_i2v, tiny_hunyuan_i2v):
    """Each caption is encoded with its clip's first frame as the pipeline's encode_prompt encodes them;
    image_latents are prepare_latents' (the frame alone, posterior mode, scaled); the unconditional record is
    the pipeline's negative (empty prompt, black image); a validation prompt stores the frame it was encoded
    with."""
    from diffusers import HunyuanVideoImageToVideoPipeline
    from PIL import Image

    from fastvideo.dataset.latent_dataset import LatentDataset
    from fastvideo.media.video import FrameSpec, load_media

    pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(tiny_hunyuan_i2v)
    adapter = get_adapter_class("hunyuan")(tiny_hunyuan_i2v)
    spec = FrameSpec(num_frames=13, height=32, width=48, train_fps=30.0)

    def frame(media_path) -> Image.Image:
        return adapter.frame_image(load_media(media_path, spec).frames[:, 0])

    def expected(text: str, image: Image.Image) -> dict:
        embeds, pooled, mask = pipe.encode_prompt(
            image=image, prompt=text, device="cpu", image_embed_interleave=4
        )
        return {"prompt_embeds": embeds[0].bfloat16().float(), "prompt_attention_mask": mask[0].bool(),
                "pooled_prompt_embeds": pooled[0].bfloat16().float()}  # fmt: skip

    def same_text(got: dict, want: dict) -> None:
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key

    dataset = LatentDataset(processed_hunyuan_i2v)
    record, cond = dataset.records[0], dataset[0]["cond"]
    image = frame(record["media_path"])
    same_text(cond, expected(record["caption"], image))
    assert cond["prompt_embeds"].shape == (144 + 252, 32)
    pixels = pipe.video_processor.preprocess(image, 32, 48)
    _, image_latents = pipe.prepare_latents(pixels, 1, 16, 32, 48, 13, torch.float32, "cpu", None, None,
                                            "token_replace")  # fmt: skip
    torch.testing.assert_close(cond["image_latents"], image_latents[0])
    same_text(load_null_condition(processed_hunyuan_i2v), expected("", Image.new("RGB", (48, 32), 0)))
    prompt = validation_prompts(processed_hunyuan_i2v)[0]
    source = json.loads((processed_hunyuan_i2v / "validation" / "videos2caption.json").read_text())[0]
    same_text(prompt, expected(prompt["caption"], frame(source["first_frame_of"])))
    assert prompt["image_latents"].shape == (16, 1, 4, 6)


@pytest.mark.slow
def test_i2v_sp2_run_equals_one_process(tmp_path, tiny_hunyuan_i2v, processed_hunyuan_i2v):
    """Image-to-video fine-tuning (the first frame's tokens, modulated as timestep 0, all on rank 0 here):
    SP=2 equals one process (losses, weights, EMA, validation conditioned on the stored first frames)."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    run(TRAIN, ref, tiny_hunyuan_i2v, processed_hunyuan_i2v, *I2V, "--train_batch_size", 2)
    run(TRAIN, out, tiny_hunyuan_i2v, processed_hunyuan_i2v, *I2V, "--sp_size", 2, "--train_batch_size", 2,
        nproc=2)  # fmt: skip
    assert_same_run(out, ref, names=BOTH)
    sampled = [torch.load(d / "validation" / "step-00000003" / "prompt-00.pt") for d in (out, ref)]
    torch.testing.assert_close(*sampled, rtol=1e-4, atol=1e-5)
