"""Decode benchmark: seconds to cut one training sample out of a long video, three ways side by side.

Run:
    python benchmarks/bench_decode.py [--seconds 20 --height 1080 --width 1920 --num_frames 37]

It creates (once, cached under data/bench/) a synthetic H.264 clip -- by default 20 s of 1080p at 30 fps
with moving test patterns plus temporal noise, so it does not compress trivially, and a keyframe every
250 frames (x264's default interval; scene-cut keyframes off so the seek cost is predictable; --gop) --
then times, for a ``num_frames`` sample at 30 fps taken from the start and from the centre of the clip:

    fastvideo      fastvideo.media.video.load_video: decodes only the needed span (seeking to
                   the keyframe before a centre window), converts only the kept frames to RGB
    pyav-all       baseline: PyAV decodes every frame of the file and converts each to RGB, keeping the
                   needed ones (what "read the whole video, then index" loaders do)
    decord         decord.VideoReader + get_batch(needed indices) (skipped if decord is not importable)

Every method ends with the same antialiased resize to the output size (--out_height x --out_width), so
each row is the cost of one finished sample. Each measurement is repeated (--repeats, default 3) and
the median is reported; "speedup" is baseline median / method median. It also prints the mean absolute
difference of each method's frames from the baseline's (a check that they picked the same frames;
small non-zero values come from YUV->RGB matrix/rounding differences).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastvideo.io import atomic_path  # noqa: E402
from fastvideo.media.video import FrameSpec, load_video, probe_video  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parents[1] / "data" / "bench"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--fps", type=int, default=30, help="source frame rate (also the sample rate)")
    p.add_argument("--gop", type=int, default=250, help="keyframe interval of the synthetic clip")
    p.add_argument("--num_frames", type=int, default=37)
    p.add_argument("--out_height", type=int, default=480)
    p.add_argument("--out_width", type=int, default=848)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def synthetic_clip(args: argparse.Namespace) -> Path:
    """Create (once) the long test clip; cached by its parameters."""
    name = f"synthetic_{args.width}x{args.height}_{args.seconds:g}s_{args.fps}fps_gop{args.gop}.mp4"
    path = BENCH_DIR / name
    if path.exists():
        return path
    print(f"generating {path} (once) ...", flush=True)
    source = (
        f"testsrc2=size={args.width}x{args.height}:rate={args.fps},noise=alls=12:allf=t,"
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
    )
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "lavfi", "-i", source, "-t", str(args.seconds), "-c:v", "libx264", "-preset", "fast"]
    # scenecut=0: keyframes exactly every --gop frames, so the centre-window seek cost is predictable.
    cmd += [
        "-crf",
        "23",
        "-g",
        str(args.gop),
        "-x264-params",
        "scenecut=0",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mp4",
    ]
    with atomic_path(path) as tmp:
        subprocess.run([*cmd, str(tmp)], check=True)
    return path


def wanted_indices(total: int, num: int, window: str) -> list[int]:
    """Source frame indices for a sample at the source rate (same rule as load_video's centre window)."""
    start = 0 if window == "start" else math.floor((total - num) / 2)
    return list(range(start, start + num))


def resize_to_sample(frames: np.ndarray, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> float ``[3, F, out_h, out_w]`` in [-1, 1] (cover + centre crop).

    Frame by frame, like load_video, so the methods differ only in how they decode.
    """
    h, w = frames.shape[1:3]
    scale = max(out_h / h, out_w / w)
    rh, rw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    top, left = (rh - out_h) // 2, (rw - out_w) // 2
    out = []
    for frame in frames:
        x = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0)[None]
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(x[:, top : top + out_h, left : left + out_w] * 2 - 1)
    return torch.stack(out, dim=1)


def run_fastvideo(path: Path, indices: list[int], args: argparse.Namespace, window: str) -> torch.Tensor:
    spec = FrameSpec(len(indices), args.out_height, args.out_width, float(args.fps), window=window)
    return load_video(path, spec).frames


def run_pyav_all(path: Path, indices: list[int], args: argparse.Namespace, window: str) -> torch.Tensor:
    wanted = set(indices)
    kept = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")  # every frame, as whole-video readers do
            if i in wanted:
                kept.append(rgb)
    return resize_to_sample(np.stack(kept), args.out_height, args.out_width)


def run_decord(path: Path, indices: list[int], args: argparse.Namespace, window: str) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = reader.get_batch(indices).asnumpy()
    return resize_to_sample(frames, args.out_height, args.out_width)


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def time_method(
    fn: Callable[..., torch.Tensor], call_args: tuple, repeats: int
) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*call_args)
        times.append(time.perf_counter() - start)
    return times, out


def keyframe_positions(path: Path) -> list[int]:
    """Presentation indices of the keyframes (demux only)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        with av.open(str(path)) as again:
            keys = {p.pts for p in again.demux(again.streams.video[0]) if p.is_keyframe}
    return [i for i, t in enumerate(pts) if t in keys]


def print_header(path: Path, args: argparse.Namespace) -> None:
    info = probe_video(path)
    versions = f"torch {torch.__version__}, av {av.__version__}"
    if decord_available():
        import decord

        versions += f", decord {decord.__version__}"
    print(f"date     : {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine  : {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print(f"libs     : {versions}, torch threads {torch.get_num_threads()}")
    print(
        f"clip     : {path.name}: {info.width}x{info.height} {info.fps:g} fps, {info.num_frames} frames "
        f"({info.duration_s:.1f} s), H.264, {path.stat().st_size / 1e6:.1f} MB, "
        f"keyframes at {keyframe_positions(path)}"
    )
    print(
        f"sample   : {args.num_frames} frames at {args.fps} fps -> {args.out_height}x{args.out_width}, "
        f"median of {args.repeats}"
    )


def bench_window(path: Path, window: str, total: int, methods: dict, args: argparse.Namespace) -> None:
    """Time every method on one window and print its rows (the first method is the baseline)."""
    indices = wanted_indices(total, args.num_frames, window)
    baseline_s, baseline_out = None, None
    for name, fn in methods.items():
        times, out = time_method(fn, (path, indices, args, window), args.repeats)
        median = statistics.median(times)
        if baseline_s is None:
            baseline_s, baseline_out = median, out
        diff = (out - baseline_out).abs().mean().item() * 127.5  # in 8-bit levels
        notes = f"frames {indices[0]}..{indices[-1]}"
        if name == "fastvideo":
            spec = FrameSpec(args.num_frames, args.out_height, args.out_width, float(args.fps), window=window)
            notes += f", decoded {load_video(path, spec).decoded_frames} of {total}"
        print(
            f"{window:<8} {name:<10} {median:>9.3f} {min(times):>8.3f} {baseline_s / median:>7.1f}x "
            f"{diff:>8.2f}  {notes}",
            flush=True,
        )


def main() -> None:
    args = parse_args()
    path = synthetic_clip(args)
    total = probe_video(path).num_frames
    print_header(path, args)
    methods = {"pyav-all": run_pyav_all, "fastvideo": run_fastvideo}
    if decord_available():
        methods["decord"] = run_decord
    else:
        print("decord   : not importable, skipped")
    # Warm up once, untimed: first torch/PyAV calls and reading the file into the page cache.
    run_fastvideo(path, wanted_indices(total, args.num_frames, "start"), args, "start")
    print()
    print(f"{'window':<8} {'method':<10} {'median s':>9} {'min s':>8} {'speedup':>8} {'|diff|':>8}  notes")
    for window in ("start", "center"):
        bench_window(path, window, total, methods, args)


if __name__ == "__main__":
    main()
