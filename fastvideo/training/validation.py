"""Validation during training: every rank samples every validation prompt, in step.

All ranks run the DiT together (FSDP and sequence parallelism need them all), with the same
noise; then prompt i is decoded and written by rank ``i % world_size``, so no rank sits in a
collective while another decodes alone. Sampling is plain Euler on the family's default schedule
(Mochi: MochiPipeline's linear-quadratic one), with classifier-free guidance against the family's
unconditional input (what caption dropout trains: ``adapter.null_condition``) when the guidance
scale is above 1. An image-to-video model conditions validation prompt i on the first frame of
training item i (of item 0's shape). Each prompt's final latents are saved beside
its mp4 (``prompt-NN.pt``). With ``--validation_seeds`` k > 1 each prompt is also sampled with k - 1 more
seeds, and ``measures.json`` holds each prompt's diversity across them and its motion (``collapse.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastvideo.dataset.layout import INDEX_FILE, VALIDATION_DIR, load_condition
from fastvideo.io import atomic_torch_save, atomic_write_json
from fastvideo.media.video import write_video
from fastvideo.sample.denoise import euler_denoise
from fastvideo.training.collapse import measure


def validation_prompts(data_dir: Path) -> list[dict]:
    """``[{"caption": str, **conditioning record}]`` of the validation prompts preprocessing encoded."""
    folder = data_dir / VALIDATION_DIR
    index = folder / INDEX_FILE
    if not index.is_file():
        return []
    records = json.loads(index.read_text())
    return [{"caption": rec["caption"], **load_condition(folder, rec)} for rec in records]


def train_fps(data_dir: Path) -> float:
    config = data_dir / "preprocess_config.json"
    return json.loads(config.read_text()).get("train_fps", 30.0) if config.is_file() else 30.0


def sample_latents(
    trainer,
    prompt: dict,
    shape: tuple[int, ...],
    seed: int,
    sigmas: torch.Tensor,
    guidance: float,
    model: torch.nn.Module | None = None,
) -> torch.Tensor:
    device = trainer.dist.device
    latents = trainer.adapter.initial_noise((1, *shape), torch.Generator().manual_seed(seed)).to(device)
    cond = {k: v[None].to(device) for k, v in prompt.items() if k != "caption"}
    latents = trainer.adapter.initial_latents(latents, cond)
    negative = trainer.null_condition(cond) if guidance > 1.0 else None
    model = model if model is not None else trainer.sampling_model()
    return euler_denoise(trainer.adapter, model, latents, sigmas, cond, guidance, negative)


def with_first_frame(trainer, i: int, prompt: dict) -> dict:
    """Image-to-video: validation prompt ``i`` is conditioned on the first frame of training item ``i``
    (its stored image conditioning; items shaped like item 0, which sets validation's shape), since
    validation prompts come without images. A record that holds its image part already keeps it (a family
    whose text encoder saw a first frame stores that frame's conditioning with the prompt)."""
    keys = trainer.adapter.image_condition_keys
    if not keys or all(k in prompt for k in keys):  # none, or its record has its own (prompt_sees_image)
        return prompt
    dataset = trainer.dataset
    same_shape = [j for j, key in enumerate(dataset.bucket_keys()) if key == dataset.bucket_key(0)]
    item = dataset[same_shape[i % len(same_shape)]]
    return {**prompt, **{k: item["cond"][k] for k in keys}}


def run_validation(
    trainer,
    out_dir: Path,
    sigmas: torch.Tensor | None = None,
    guidance: float | None = None,
    model: torch.nn.Module | None = None,
    write: bool = True,
) -> dict | None:
    """Sample every validation prompt (default: the config's steps on the family's schedule and guidance) with
    ``--validation_seeds`` seeds; write the first seed's mp4 and latents (``write``) and ``measures.json``;
    return the measures (``collapse.measure``: per prompt and on average, diversity across seeds and motion),
    or None without validation prompts. ``model``: what to sample with (default ``trainer.sampling_model()``)."""
    if sigmas is None:
        sigmas = trainer.adapter.default_sigmas(trainer.cfg.validation_sampling_steps)
    if guidance is None:
        guidance = trainer.cfg.validation_guidance_scale
    prompts = validation_prompts(trainer.dataset.root)
    if not prompts:
        return None
    prompts = [with_first_frame(trainer, i, p) for i, p in enumerate(prompts)]
    shape = tuple(trainer.dataset[0]["latents"].shape)
    vae = None
    per_prompt = []
    for i, prompt in enumerate(prompts):
        # Seed k of prompt i: seed + i + 1000 k (the first seed is what validation always drew).
        seeds = [trainer.cfg.seed + i + 1000 * k for k in range(trainer.cfg.validation_seeds)]
        samples = [sample_latents(trainer, prompt, shape, seed, sigmas, guidance, model) for seed in seeds]
        per_prompt.append([x.cpu() for x in samples])
        if not write or i % trainer.dist.world_size != trainer.dist.rank:
            continue
        vae = vae or trainer.adapter.load_vae()
        video = trainer.adapter.decode_latents(vae, samples[0])[0].cpu()
        path = out_dir / f"prompt-{i:02d}.mp4"
        write_video(path, video, fps=train_fps(trainer.dataset.root))
        atomic_torch_save(samples[0].cpu(), path.with_suffix(".pt"))  # exact comparisons and re-decoding
        (out_dir / f"prompt-{i:02d}.txt").write_text(prompt["caption"] + "\n", encoding="utf-8")
    measures = measure([p["caption"] for p in prompts], per_prompt)
    if trainer.dist.is_main:
        atomic_write_json(measures, out_dir / "measures.json")
    trainer.dist.barrier()
    return measures
