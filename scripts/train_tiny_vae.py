"""Train an embedded tiny VAE on synthetic clips and ship it in ``assets/``.

``fastvideo.models.tiny`` loads these weights, so the tiny model's latents decode back to pictures.
``--model_type mochi`` (the default) trains ``TINY_MOCHI_VAE`` into ``assets/tiny-mochi-vae/`` (32
channels per level, 64 in the encoder's last, no attention, the real 6x temporal / 8x spatial
compression, 12 latent channels); ``--model_type wan`` trains ``TINY_WAN_VAE`` (an
``AutoencoderKLWan``: 8 / 16 / 32 channels, the real 4x temporal / 8x spatial compression, 16 latent
channels) into ``assets/tiny-wan-vae/``. Run from the repository root:

    OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py                 # the shipped Mochi weights, ~12 min
    OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py --model_type wan  # the shipped Wan weights, ~20 min
    OMP_NUM_THREADS=1 python scripts/train_tiny_vae.py --steps 20 --num_clips 8 --output /tmp/vae  # smoke run

Data: ``--num_clips`` synthetic clips (``fastvideo.data_preprocess.synthetic``, seed ``--seed``;
coloured shapes moving across a dark background) written as real mp4 files and decoded by
preprocessing's own loader (``load_video``: resampled to 30 fps, resized to cover and centre-cropped
to ``--height`` x ``--width``, scaled to [-1, 1]), so the VAE trains on exactly the pixels
preprocessing feeds it. Held-out clips come from seed ``--seed + 1``.

Training: each step takes ``--batch_size`` random ``--num_frames`` windows [B, 3, F, H, W] (Mochi:
one window of 19 frames, a first frame encoded alone, as in every clip, then three 6-frame latents;
Wan: two of 17 frames, the first alone, then four 4-frame latents), encodes them and decodes the
posterior mean (``--posterior``; preprocessing encodes clips to the mean too); loss = L1 + MSE
(pixels in [-1, 1]) + ``--kl_weight`` x KL(posterior || N(0, 1)) per latent element. Wan's VAE
clamps what it decodes to [-1, 1], which would stop the gradient of every pixel pushed past the
dark background's -0.9, so training reads its decoder's unclamped output (``decode_for_training``).
The weights start from an autoencoder that already passes colour (``init_colour_paths`` for Mochi:
without it every colour decodes as one tan; ``init_wan_paths`` for Wan: without it every shape
vanishes into the background). Mochi's encoder learns at ``--encoder_lr_scale`` (0.1) x ``--lr``,
so that path survives its GroupNorms while the decoder learns shapes; Wan's RMS norms keep colour,
and its encoder learns at the full rate (from a start without latents 3-5's moments, 0.1 gave
25.5 dB held-out after 450 steps where 1.0 gave 26.0). AdamW, linear warm-up then cosine decay,
gradient norm clipped to 1; the held-out PSNR is printed every ``--eval_every`` steps. Full frames, not
crops: Mochi's GroupNorm normalises each frame over its whole area (and Wan's middle blocks attend
across it), so crops would see other statistics than preprocessing's frames. Per frame and step,
19-frame windows cost far less than 7-frame ones (per-call overheads), so 19 frames give the most
training per second. Wan takes two windows a step because PyTorch's CPU conv3d only takes its
oneDNN path from batch 2 up: a batch of one falls back to a kernel about 5x slower, so two windows
cost about what one does.

Afterwards ``latents_mean`` / ``latents_std`` (one value per latent channel: over the posterior
means of the first ``--eval_frames`` frames of every training clip, the window preprocessing takes by
default) go into the config, so normalised latents, what the DiT trains on, have zero mean and unit
variance. The folder (config.json, fp16 diffusion_pytorch_model.safetensors that from_pretrained
loads as float32, training.json with the settings and results) is written atomically, reloaded,
and evaluated through the family adapter's ``encode_video`` / ``decode_latents``: PSNR (pixels in
[0, 1]) on the first ``--eval_frames`` frames of training and of held-out clips.
Everything is deterministic from ``--seed`` on a given machine and thread count, but the result
depends on the run: the Mochi recipe on 2 threads for 700 steps reached only 23.5 dB held-out.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLMochi, AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_mochi import MochiResnetBlock3D
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanAttentionBlock,
    WanCausalConv3d,
    WanResample,
    WanResidualBlock,
)
from tqdm import tqdm

from fastvideo.data_preprocess.synthetic import make_synthetic_dataset
from fastvideo.io import atomic_dir
from fastvideo.media.video import FrameSpec, load_video
from fastvideo.models.base import ModelAdapter
from fastvideo.models.mochi import MochiAdapter
from fastvideo.models.tiny import TINY_MOCHI_VAE, TINY_MOCHI_VAE_DIR, TINY_WAN_VAE, TINY_WAN_VAE_DIR
from fastvideo.models.wan import WanAdapter

CLIP_SECONDS = 2.0  # the synthetic default: 60 frames at 30 fps
TRAIN_FPS = 30.0


@dataclass(frozen=True)
class Family:
    """What differs between the families' tiny VAEs: class, architecture, adapter, frame rule, recipe."""

    vae_class: type
    architecture: dict
    adapter_class: type[ModelAdapter]
    output: Path
    temporal_factor: int  # windows of k * temporal_factor + 1 frames
    init: Callable | None  # a starting point other than diffusers' initialisation
    extra_config: dict  # written into the VAE config beside latents_mean / latents_std
    defaults: dict = field(default_factory=dict)  # the recipe's command-line defaults


@dataclass
class Settings:
    model_type: str
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
    # The family picks the recipe's defaults, so read it first.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model_type", choices=sorted(FAMILIES), default="mochi")
    family = FAMILIES[first.parse_known_args(argv)[0].model_type]
    d = {**MOCHI_RECIPE, **family.defaults}
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_type", choices=sorted(FAMILIES), default="mochi", help="which tiny VAE")
    parser.add_argument("--output", default=str(family.output), help="diffusers folder to write")
    parser.add_argument("--seed", type=int, default=0, help="weights, data and sampling follow from it")
    parser.add_argument("--steps", type=int, default=d["steps"])
    parser.add_argument("--batch_size", type=int, default=d["batch_size"])
    parser.add_argument(
        "--num_frames",
        type=int,
        default=d["num_frames"],
        help=f"frames per training window ({family.temporal_factor}k+1)",
    )
    parser.add_argument("--height", type=int, default=64, help="frame height (multiple of 16)")
    parser.add_argument("--width", type=int, default=96, help="frame width (multiple of 16)")
    parser.add_argument("--num_clips", type=int, default=84, help="training clips (84 = every combination)")
    parser.add_argument("--heldout_clips", type=int, default=8, help="clips of seed + 1 to evaluate on")
    parser.add_argument("--eval_frames", type=int, default=25, help="frames per clip for statistics and PSNR")
    parser.add_argument("--eval_every", type=int, default=250, help="held-out PSNR every N steps (0: never)")
    parser.add_argument("--lr", type=float, default=d["lr"])
    parser.add_argument(
        "--encoder_lr_scale",
        type=float,
        default=d["encoder_lr_scale"],
        help="the encoder learns at lr x this (Mochi: 0.1, so its colour path, see init_colour_paths, "
        "stays while the decoder learns)",
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
    k = family.temporal_factor
    for name in ("num_frames", "eval_frames"):
        value = getattr(s, name)
        if (value - 1) % k or not 1 <= value <= frames_per_clip:
            parser.error(f"--{name} must be {k}k+1 and at most {frames_per_clip}, got {value}")
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


# init_wan_paths: stream channels that carry R, G and B, and one held at WAN_ONE (a bias for the RMS norms).
WAN_RGB, WAN_ONE_CHANNEL, WAN_ONE = (0, 1, 2), 3, 8.0
# Encoder channels 4-6 (then latents 3-5) start as where the picture's brightness lies within each
# cell: right minus left, bottom minus top, later minus earlier, added up over the down-sampling
# steps at WAN_MOMENT each (see init_wan_resample).
WAN_DX, WAN_DY, WAN_DT, WAN_MOMENT = 4, 5, 6, 0.1
# Colour enters each head's SiLU at about WAN_SIGNAL x its value, where SiLU is close to linear.
WAN_SIGNAL = 0.05
# The decoder's start takes latents 3-15 in at this gain (see init_wan_paths).
WAN_CARRY = 0.1


def _identity_taps(
    weight: torch.Tensor, channels, tap: tuple[int, ...], value: float = 1.0, out_offset: int = 0
):
    """Set ``weight[out_offset + c, c, *tap] = value`` for each channel ``c`` (the rest already zero)."""
    for channel in channels:
        weight[(out_offset + channel, channel, *tap)] = value


def _zero(module: torch.nn.Module) -> None:
    module.weight.zero_()
    if module.bias is not None:
        module.bias.zero_()


def _zero_rows(module: torch.nn.Module, rows: list[int]) -> None:
    module.weight[rows] = 0.0
    module.bias[rows] = 0.0


@torch.no_grad()
def init_wan_paths(vae: AutoencoderKLWan) -> None:
    """Start from an autoencoder that already passes colour: average-pool RGB into latents 0-2 and back.

    Why: from diffusers' initialisation the tiny Wan VAE settles on the background alone (19 dB
    after 200 steps, every shape gone): its linear chain (conv_in, shortcuts, resampling convs,
    conv_out) has a small gain, so the latents barely depend on the picture. As with Mochi's
    ``init_colour_paths``, every residual branch (its last conv) and attention output starts at
    zero, and the chain carries R, G, B along channels 0-2: the encoder averages them over 2x2
    pixels per spatial step and 2 frames per temporal step into latents 0-2, the decoder repeats
    them back up (both copies of each temporal up-sampling) and reads R, G, B off channels 0-2.
    The chain passes every other channel the same way (the decoder takes latents 3-15 in at
    ``WAN_CARRY``): what a residual branch learns to put in a channel reaches the levels after it
    from the first step, where a zeroed chain would leave it, and the gradient back to it, at zero.
    Encoder channels 4-6 also gather, at each down-sampling step, the brightness difference
    between the right and left (bottom and top, later and earlier) halves, so latents 3-5 say where
    within its cell and chunk a shape sits: without them the decoder snapped shapes to whole
    8-pixel cells (a slow shape jumped once a cell).
    Wan's RMS norms scale each pixel's channel vector to a fixed length, which alone would lose
    brightness; channel 3 is held at ``WAN_ONE`` beside the colour, so that length barely depends on
    the colour and the norm is close to a constant gain. Each head then feeds colour at about
    ``WAN_SIGNAL`` into its SiLU, where SiLU is close to x / 2, and the next conv undoes the 2 / signal.
    Same architecture; only the starting point.
    """
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            _zero(module.conv2)
            if isinstance(module.conv_shortcut, WanCausalConv3d):
                _zero(module.conv_shortcut)
                _identity_taps(module.conv_shortcut.weight, _shared_channels(module.conv_shortcut), (0, 0, 0))
        elif isinstance(module, WanAttentionBlock):
            _zero(module.proj)
        elif isinstance(module, WanResample):
            init_wan_resample(module)
    for conv in (vae.quant_conv, vae.post_quant_conv):
        _zero(conv)
        _identity_taps(conv.weight, range(conv.weight.shape[0]), (0, 0, 0))
    current = (2, 1, 1)  # the causal 3x3x3 kernel's tap on this frame and pixel
    for part in (vae.encoder, vae.decoder):
        _zero(part.conv_in)
        part.conv_in.bias[WAN_ONE_CHANNEL] = WAN_ONE
        # The norm divides by |v| / sqrt(C), with |v| about WAN_ONE; scale colour to WAN_SIGNAL.
        gain = WAN_ONE / part.norm_out.scale
        part.norm_out.gamma[list(WAN_RGB)] = WAN_SIGNAL * gain
        # Posterior means 0-2 (encoder) or pixels (decoder) = 2 / signal x SiLU(signal x colour).
        if part is vae.encoder:
            # Means 3-15 keep diffusers' random start: nothing but a linear chain joins them to the
            # decoder, so at zero they would stay zero for good. Log-variances start at 0.
            moments = (WAN_DX, WAN_DY, WAN_DT)
            _zero_rows(
                part.conv_out, [*WAN_RGB, *range(3, 6), *range(vae.config.z_dim, 2 * vae.config.z_dim)]
            )
            part.norm_out.gamma[list(moments)] = WAN_SIGNAL * gain
            for latent, channel in zip(range(3, 6), moments, strict=True):
                part.conv_out.weight[(latent, channel, *current)] = 2.0 / WAN_SIGNAL
        else:
            _zero(part.conv_out)
        _identity_taps(part.conv_out.weight, WAN_RGB, current, 2.0 / WAN_SIGNAL)
    _identity_taps(vae.encoder.conv_in.weight, WAN_RGB, current)  # input channels 0-2 are the pixels
    _identity_taps(vae.decoder.conv_in.weight, WAN_RGB, current)  # latents 0-2 carry the colour
    # Latents 3-15 go on beside them in channels 4-16, weakly, so they barely move the RMS norms.
    for latent in range(len(WAN_RGB), vae.config.z_dim):
        vae.decoder.conv_in.weight[(latent + 1, latent, *current)] = WAN_CARRY


def _shared_channels(conv: torch.nn.Module) -> range:
    return range(min(conv.weight.shape[0], conv.weight.shape[1]))


def init_wan_resample(resample: WanResample) -> None:
    """Down-sampling averages 2x2 pixels (and 2 frames); up-sampling repeats them (into both frames)."""
    channels = _shared_channels(resample.resample[1])
    if resample.mode in ("downsample2d", "downsample3d"):
        conv = resample.resample[1]  # after a zero pad on the right and bottom: taps 0-1 stay inside
        _zero(conv)
        for dy in range(2):
            for dx in range(2):
                _identity_taps(conv.weight, channels, (dy, dx), 0.25)
                # Brightness (R + G + B) right of / below the middle counts +, left / above -.
                conv.weight[WAN_DX, list(WAN_RGB), dy, dx] += WAN_MOMENT * (dx - 0.5) / 2
                conv.weight[WAN_DY, list(WAN_RGB), dy, dx] += WAN_MOMENT * (dy - 0.5) / 2
    elif resample.mode in ("upsample2d", "upsample3d"):
        conv = resample.resample[1]  # after a nearest-neighbour up-sampling
        _zero(conv)
        _identity_taps(conv.weight, channels, (1, 1))
    if resample.mode == "downsample3d":
        # Its windows are (last frame before, 1, 2) and (2, 3, 4) of a chunk: averaging taps 1-2 makes
        # each latent the mean of its own 4 frames, what the decoder's repeats start from.
        _zero(resample.time_conv)
        for tap in (1, 2):
            _identity_taps(resample.time_conv.weight, channels, (tap, 0, 0), 0.5)
            resample.time_conv.weight[WAN_DT, list(WAN_RGB), tap, 0, 0] += WAN_MOMENT * (tap - 1.5)
    elif resample.mode == "upsample3d":
        # Output channels [0, dim) make the first frame of each pair, [dim, 2 dim) the second.
        _zero(resample.time_conv)
        for offset in (0, resample.dim):
            _identity_taps(resample.time_conv.weight, channels, (2, 0, 0), out_offset=offset)


# The Mochi recipe (what the shipped Mochi weights were trained with); other families override some.
MOCHI_RECIPE = dict(steps=500, batch_size=1, num_frames=19, lr=2e-3, encoder_lr_scale=0.1)

FAMILIES = {
    "mochi": Family(
        vae_class=AutoencoderKLMochi,
        architecture=TINY_MOCHI_VAE,
        adapter_class=MochiAdapter,
        output=TINY_MOCHI_VAE_DIR,
        temporal_factor=6,
        init=init_colour_paths,
        extra_config={"scaling_factor": 1.0},
    ),
    "wan": Family(
        vae_class=AutoencoderKLWan,
        architecture=TINY_WAN_VAE,
        adapter_class=WanAdapter,
        output=TINY_WAN_VAE_DIR,
        temporal_factor=4,
        init=init_wan_paths,
        extra_config={},  # WanPipeline reads no scaling factor: latents are (z - mean) / std
        # Two windows a step: a step of two costs about what one of one does (see the docstring).
        defaults=dict(steps=450, batch_size=2, num_frames=17, encoder_lr_scale=1.0),
    ),
}


def decode_for_training(vae, latents: torch.Tensor) -> torch.Tensor:
    """The decoded video, with a gradient for every pixel.

    AutoencoderKLWan's decode clamps its output to [-1, 1]; a background pixel decoded below -1
    would then get no gradient back up to its -0.9. Its decoder runs once per latent frame and
    does not clamp, so this collects those outputs instead.
    """
    if not isinstance(vae, AutoencoderKLWan):
        return vae.decode(latents).sample
    chunks = []
    handle = vae.decoder.register_forward_hook(lambda module, args, output: chunks.append(output))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    return torch.cat(chunks, dim=2)


def optimizer_groups(vae, s: Settings) -> list[dict]:
    """The decoder (and post_quant_conv, if any) at ``s.lr``, the rest at ``s.lr * s.encoder_lr_scale``."""
    decoder = ("decoder.", "post_quant_conv.")
    named = list(vae.named_parameters())
    return [
        {"params": [p for n, p in named if not n.startswith(decoder)], "lr": s.lr * s.encoder_lr_scale},
        {"params": [p for n, p in named if n.startswith(decoder)]},
    ]


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


def train(vae, clips: torch.Tensor, heldout: torch.Tensor, s: Settings) -> None:
    """``s.steps`` AdamW steps on random windows of ``clips``; held-out PSNR every ``s.eval_every``."""
    # Only its encode_video / decode_latents are used.
    adapter = FAMILIES[s.model_type].adapter_class(s.output)
    gen = torch.Generator().manual_seed(s.seed)
    groups = optimizer_groups(vae, s)
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
        decoded = decode_for_training(vae, latents)
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
def latent_stats(vae, clips: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over all clips: one value per latent channel."""
    means = torch.cat([vae.encode(clip[None]).latent_dist.mode() for clip in clips])
    per_channel = means.transpose(0, 1).flatten(1).double()
    return per_channel.mean(1).tolist(), per_channel.std(1, unbiased=False).tolist()


@torch.no_grad()
def mean_psnr(adapter: ModelAdapter, vae, clips: torch.Tensor) -> tuple[float, float]:
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
    family = FAMILIES[s.model_type]
    torch.manual_seed(s.seed)
    vae = family.vae_class(**family.architecture)
    if family.init is not None:
        family.init(vae)
    train(vae, clips, heldout, s)

    first = clips[:, :, : s.eval_frames]
    mean, std = latent_stats(vae, first)
    vae.register_to_config(latents_mean=mean, latents_std=std, **family.extra_config)
    output = Path(s.output)
    with atomic_dir(output) as staging:
        vae.half().save_pretrained(staging, safe_serialization=True)
        shipped = family.vae_class.from_pretrained(staging, torch_dtype=torch.float32).eval()
        adapter = family.adapter_class(staging)
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
