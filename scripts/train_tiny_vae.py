"""Train the embedded tiny Mochi VAE on synthetic clips and ship it as ``assets/tiny-mochi-vae/``.

``fastvideo.models.tiny`` loads these weights, so the tiny model's latents decode back to pictures.
The VAE is ``TINY_MOCHI_VAE`` (32 channels per level, 64 in the encoder's last, no attention, the
real 6x temporal / 8x spatial compression, 12 latent channels). Run from the repository root:

    OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py                 # the shipped weights, ~12 min
    OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py --steps 20 --num_clips 8 --output /tmp/vae  # smoke run

Data: ``--num_clips`` synthetic clips (``fastvideo.data_preprocess.synthetic``, seed ``--seed``;
coloured shapes moving across a dark background) written as real mp4 files and decoded by
preprocessing's own loader (``load_video``: resampled to 30 fps, resized to cover and centre-cropped
to ``--height`` x ``--width``, scaled to [-1, 1]), so the VAE trains on exactly the pixels
preprocessing feeds it. Held-out clips come from seed ``--seed + 1``.

Training: each step takes ``--batch_size`` random ``--num_frames`` windows [B, 3, F, H, W] (19 frames:
a first frame encoded alone, as in every clip, then three 6-frame latents), encodes them and decodes
the posterior mean (``--posterior``; preprocessing encodes clips to the mean too); loss = L1 + MSE
(pixels in [-1, 1]) + ``--kl_weight`` x KL(posterior || N(0, 1)) per latent element. The weights
start from ``init_colour_paths`` (an autoencoder that already passes colour; without it every
colour decodes as one tan) and the encoder learns at ``--encoder_lr_scale`` x ``--lr``, so that path
survives while the decoder learns shapes. AdamW, linear warm-up then cosine decay, gradient norm
clipped to 1; the held-out PSNR is printed every ``--eval_every`` steps. Full frames, not crops: the VAE's
GroupNorm normalises each frame over its whole area, so crops would see other statistics than
preprocessing's frames. Per frame and step, 19-frame windows cost far less than 7-frame ones
(per-call overheads), so 19 frames give the most training per second.

Afterwards ``latents_mean`` / ``latents_std`` (12 values each: per channel over the posterior means
of the first ``--eval_frames`` frames of every training clip, the window preprocessing takes by
default) go into the config, so normalised latents, what the DiT trains on, have zero mean and unit
variance. The folder (config.json, fp16 diffusion_pytorch_model.safetensors that from_pretrained
loads as float32, training.json with the settings and results) is written atomically, reloaded,
and evaluated through the Mochi adapter's ``encode_video`` / ``decode_latents``: PSNR (pixels in
[0, 1]) on the first ``--eval_frames`` frames of training and of held-out clips.
Everything is deterministic from ``--seed`` on a given machine and thread count, but the result
depends on the run: the same recipe on 2 threads for 700 steps reached only 23.5 dB held-out.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLMochi
from diffusers.models.autoencoders.autoencoder_kl_mochi import MochiResnetBlock3D
from tqdm import tqdm

from fastvideo.data_preprocess.synthetic import make_synthetic_dataset
from fastvideo.data_preprocess.video import FrameSpec, load_video
from fastvideo.io import atomic_dir
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import TINY_MOCHI_VAE, TINY_MOCHI_VAE_DIR

CLIP_SECONDS = 2.0  # the synthetic default: 60 frames at 30 fps
TRAIN_FPS = 30.0


@dataclass
class Settings:
    output: str
    seed: int
    steps: int
    batch_size: int
    num_frames: int
    height: int
    width: int
    num_clips: int
    heldout_clips: int
    eval_frames: int
    eval_every: int
    lr: float
    encoder_lr_scale: float
    warmup_steps: int
    weight_decay: float
    kl_weight: float
    posterior: str
    threads: int


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=str(TINY_MOCHI_VAE_DIR), help="diffusers folder to write")
    parser.add_argument("--seed", type=int, default=0, help="weights, data and sampling follow from it")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--num_frames", type=int, default=19, help="frames per training window (6k+1)")
    parser.add_argument("--height", type=int, default=64, help="frame height (multiple of 16)")
    parser.add_argument("--width", type=int, default=96, help="frame width (multiple of 16)")
    parser.add_argument("--num_clips", type=int, default=84, help="training clips (84 = every combination)")
    parser.add_argument("--heldout_clips", type=int, default=8, help="clips of seed + 1 to evaluate on")
    parser.add_argument("--eval_frames", type=int, default=25, help="frames per clip for statistics and PSNR")
    parser.add_argument("--eval_every", type=int, default=250, help="held-out PSNR every N steps (0: never)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--encoder_lr_scale",
        type=float,
        default=0.1,
        help="the encoder learns at lr x this, so its colour path (see init_colour_paths) stays while the decoder learns",
    )
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--weight_decay", type=float, default=1e-2)
    parser.add_argument("--kl_weight", type=float, default=1e-6, help="weight of the per-element KL term")
    parser.add_argument(
        "--posterior",
        choices=("mode", "sample"),
        default="mode",
        help="decode the posterior mean (preprocessing encodes clips to it) or a sample during training",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    s = Settings(**vars(parser.parse_args(argv)))
    frames_per_clip = round(CLIP_SECONDS * TRAIN_FPS)
    for name in ("num_frames", "eval_frames"):
        value = getattr(s, name)
        if (value - 1) % 6 or not 1 <= value <= frames_per_clip:
            parser.error(f"--{name} must be 6k+1 and at most {frames_per_clip}, got {value}")
    if s.height % 16 or s.width % 16:
        parser.error(f"--height and --width must be multiples of 16, got {s.height}x{s.width}")
    return s


def load_clips(folder: Path, *, seed: int, count: int, height: int, width: int) -> torch.Tensor:
    """Write ``count`` synthetic mp4 clips of ``seed`` and decode them: [count, 3, 60, H, W] in [-1, 1]."""
    dataset = make_synthetic_dataset(folder, num_videos=count, num_images=0, seconds=CLIP_SECONDS, seed=seed)
    spec = FrameSpec(
        num_frames=round(CLIP_SECONDS * TRAIN_FPS), height=height, width=width, train_fps=TRAIN_FPS
    )
    paths = sorted(dataset.mochi_dir.glob("clip_*.mp4"))
    return torch.stack(
        [load_video(p, spec).frames for p in tqdm(paths, desc=f"decode seed {seed}", unit="clip")]
    )


# init_colour_paths: stream channels that carry R, G and B, each beside a channel held at 1.
RGB_CHANNELS, ONE_CHANNELS = (0, 2, 4), (1, 3, 5)


@torch.no_grad()
def init_colour_paths(vae: AutoencoderKLMochi) -> None:
    """Start from an autoencoder that already passes colour: average-pool RGB into latents 0-2 and back.

    Why: GroupNorm with 32 groups over 32 channels normalises every channel of every frame on its
    own, so the residual branches only see where a flat shape is, never its colour; colour has to
    travel the chain of linear maps beside them (proj_in, the strided convs, proj_out; conv_in, the
    up-sampling projections, proj_out). With default init that chain has a small gain and learns
    slowly, and training settles on one average colour (tan) for every shape. Here every residual
    branch starts at zero (its last conv); the encoder's linear maps carry R, G, B along channels
    0, 2, 4 (averaging in the strided convs) into latents 0-2, and the decoder's carry the latents
    along channels 0-11 (repeating in the up-sampling projections) and read R, G, B from 0-2. The
    encoder's final norm has 2 channels per group (64 channels), so each colour channel is normalised
    together with a channel held at 1 (a bias), which keeps its level. Same architecture; only the
    starting point.
    """
    encoder, decoder = vae.encoder, vae.decoder
    for module in vae.modules():
        if isinstance(module, MochiResnetBlock3D):
            module.conv2.conv.weight.zero_()
            module.conv2.conv.bias.zero_()
    encoder.proj_in.weight.zero_()
    encoder.proj_in.bias.zero_()
    for colour, (rgb, one) in enumerate(zip(RGB_CHANNELS, ONE_CHANNELS, strict=True)):
        encoder.proj_in.weight[rgb, colour] = 1.0  # input channels 0-2 are the pixels (then Fourier features)
        encoder.proj_in.bias[one] = 1.0
    for block in encoder.down_blocks:
        conv = block.conv_in.conv
        conv.weight.zero_()
        conv.bias.zero_()
        for channel in RGB_CHANNELS + ONE_CHANNELS:
            conv.weight[channel, channel] = 1.0 / conv.weight[0, 0].numel()  # a mean over the window
    encoder.proj_out.weight.zero_()  # no bias: log-variances start at 0
    for latent, rgb in enumerate(RGB_CHANNELS):
        encoder.proj_out.weight[latent, rgb] = 1.0
    decoder.conv_in.weight.zero_()
    decoder.conv_in.bias.zero_()
    for channel in range(vae.config.latent_channels):
        decoder.conv_in.weight[channel, channel] = 1.0
    for block in decoder.up_blocks:
        proj = block.proj
        repeats = block.temporal_expansion * block.spatial_expansion**2
        proj.weight.zero_()
        proj.bias.zero_()
        for channel in range(min(proj.in_features, proj.out_features // repeats)):
            proj.weight[channel * repeats : (channel + 1) * repeats, channel] = 1.0
    decoder.proj_out.weight.zero_()
    decoder.proj_out.bias.zero_()
    for colour in range(3):
        decoder.proj_out.weight[colour, colour] = 1.0


def lr_factor(step: int, s: Settings) -> float:
    """Linear warm-up to 1, then cosine decay to 0.05."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def psnr(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1], measured on pixels in [0, 1]."""
    mse = ((reference - decoded) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train(vae: AutoencoderKLMochi, clips: torch.Tensor, heldout: torch.Tensor, s: Settings) -> None:
    """``s.steps`` AdamW steps on random windows of ``clips``; held-out PSNR every ``s.eval_every``."""
    adapter = MochiAdapter(s.output)  # only its encode_video / decode_latents are used
    gen = torch.Generator().manual_seed(s.seed)
    groups = [
        {"params": list(vae.encoder.parameters()), "lr": s.lr * s.encoder_lr_scale},
        {"params": list(vae.decoder.parameters())},
    ]
    optimizer = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, s))
    vae.train()
    bar = tqdm(range(1, s.steps + 1), desc="train tiny VAE", unit="step", dynamic_ncols=True)
    for step in bar:
        index = torch.randint(len(clips), (s.batch_size,), generator=gen)
        start = torch.randint(clips.shape[2] - s.num_frames + 1, (s.batch_size,), generator=gen)
        video = torch.stack([clips[i, :, t : t + s.num_frames] for i, t in zip(index, start, strict=True)])
        posterior = vae.encode(video).latent_dist
        latents = posterior.mode() if s.posterior == "mode" else posterior.sample(generator=gen)
        decoded = vae.decode(latents).sample
        l1 = (decoded - video).abs().mean()
        mse = (decoded - video).pow(2).mean()
        kl = posterior.kl().sum() / posterior.mean.numel()
        loss = l1 + mse + s.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(
            loss=f"{loss.item():.4f}",
            psnr=f"{10 * math.log10(4 / mse.item()):.1f}",
            kl=f"{kl.item():.2f}",
            mu=f"{posterior.mean.std().item():.2f}",
            sigma=f"{posterior.std.mean().item():.3f}",
        )
        if s.eval_every and (step % s.eval_every == 0 or step == s.steps):
            vae.eval()
            mean, low = mean_psnr(adapter, vae, heldout[:, :, : s.eval_frames])
            bar.write(f"step {step}: held-out PSNR {mean:.2f} dB (min {low:.2f})")
            vae.train()
    vae.eval()


@torch.no_grad()
def latent_stats(vae: AutoencoderKLMochi, clips: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over all clips: 12 values each."""
    means = torch.cat([vae.encode(clip[None]).latent_dist.mode() for clip in clips])
    per_channel = means.transpose(0, 1).flatten(1).double()
    return per_channel.mean(1).tolist(), per_channel.std(1, unbiased=False).tolist()


@torch.no_grad()
def mean_psnr(adapter: MochiAdapter, vae: AutoencoderKLMochi, clips: torch.Tensor) -> tuple[float, float]:
    """Mean and minimum PSNR over clips, encoded and decoded as preprocessing and sampling do."""
    scores = [
        psnr(clip, adapter.decode_latents(vae, adapter.encode_video(vae, clip[None]))[0]) for clip in clips
    ]
    return sum(scores) / len(scores), min(scores)


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    torch.set_num_threads(s.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiny-vae-data-") as tmp:
        clips = load_clips(
            Path(tmp) / "train", seed=s.seed, count=s.num_clips, height=s.height, width=s.width
        )
        heldout = load_clips(
            Path(tmp) / "heldout", seed=s.seed + 1, count=s.heldout_clips, height=s.height, width=s.width
        )
    torch.manual_seed(s.seed)
    vae = AutoencoderKLMochi(**TINY_MOCHI_VAE)
    init_colour_paths(vae)
    train(vae, clips, heldout, s)

    first = clips[:, :, : s.eval_frames]
    mean, std = latent_stats(vae, first)
    vae.register_to_config(latents_mean=mean, latents_std=std, scaling_factor=1.0)
    output = Path(s.output)
    with atomic_dir(output) as staging:
        vae.half().save_pretrained(staging, safe_serialization=True)
        shipped = AutoencoderKLMochi.from_pretrained(staging, torch_dtype=torch.float32).eval()
        adapter = MochiAdapter(staging)
        train_psnr = mean_psnr(adapter, shipped, first[: s.heldout_clips])
        heldout_psnr = mean_psnr(adapter, shipped, heldout[:, :, : s.eval_frames])
        normalised = torch.cat([adapter.encode_video(shipped, clip[None]) for clip in first])
        report = {
            "settings": {k: v for k, v in asdict(s).items() if k != "output"},
            "train_data_seed": s.seed,
            "heldout_data_seed": s.seed + 1,
            "psnr_db": {"train_mean": train_psnr[0], "train_min": train_psnr[1],
                        "heldout_mean": heldout_psnr[0], "heldout_min": heldout_psnr[1]},
            "normalised_latents": {"mean": normalised.mean().item(), "std": normalised.std().item()},
        }  # fmt: skip
        (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    size = sum(p.stat().st_size for p in output.iterdir())
    print(f"wrote {output} ({size / 1e6:.2f} MB) in {time.monotonic() - started:.0f} s")
    print(f"normalised training latents: mean {report['normalised_latents']['mean']:+.3f}, "
          f"std {report['normalised_latents']['std']:.3f}")  # fmt: skip
    print(f"PSNR, first {s.eval_frames} frames at {s.height}x{s.width}: "
          f"training clips {train_psnr[0]:.2f} dB (min {train_psnr[1]:.2f}), "
          f"held-out clips (seed {s.seed + 1}) {heldout_psnr[0]:.2f} dB (min {heldout_psnr[1]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
