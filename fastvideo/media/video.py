"""Video and image decoding (preprocessing, sampling, the tools): frame sampling, colour, resize, crop.

``load_media`` turns one file into a ``Clip``: a float32 tensor ``[3, F, H, W]`` in ``[-1, 1]`` plus the
source frame rate, notes about conversions worth reporting and how many frames were decoded. Files that
cannot be used raise ``MediaError`` whose message is a one-line reason for the skip report.

Frame sampling (PyAV)
    Only the frames needed are decoded. The wanted times are ``t_k = t0 + k / train_fps`` and each takes
    the source frame whose presentation timestamp is the latest at or before ``t_k`` (a small tolerance
    absorbs timestamp rounding, e.g. millisecond time bases in mkv/webm), so variable-frame-rate
    sources are handled by their timestamps, not by frame indices. ``t0`` is the first frame after
    ``skip_frames_start`` (window "start") or the start of a centred window of the usable span (window
    "center"; snapped to the source frame grid). When ``t0`` is past the first frame the container seeks
    to the keyframe before ``t0`` and decodes forward; decoding stops at the frame covering the last wanted
    time. Only the kept frames are converted to RGB. Skip counts are converted to time at the stream's
    average frame rate (exact for constant-frame-rate sources). A display-matrix rotation (phones record
    portrait video as rotated landscape) is applied, as ffmpeg's own autorotate does.

Colour
    8-bit SDR frames are converted to RGB by swscale with the tagged YUV matrix and range (untagged: BT.709
    for HD, BT.601 below 720 lines; limited range unless a ``yuvj`` format). Anything with more than 8 bits,
    non-BT.709 primaries or an HDR transfer is converted to 16-bit RGB (``rgb48le``) with the right matrix
    and range and processed in float:

    * HDR PQ (SMPTE ST 2084, "HDR10") and HLG (ARIB STD-B67), i.e. iPhone / Android HDR video: the signal
      is linearised to display light in nits (PQ EOTF; for HLG the inverse OETF followed by the BT.2100
      OOTF for a 1000-nit display, gamma 1.2), divided by 203 nits so that HDR reference white (ITU-R
      BT.2408) becomes SDR white 1.0, converted from BT.2020 to BT.709 primaries in linear light
      (out-of-gamut negatives clipped to 0), tone-mapped, and encoded with the inverse BT.1886 EOTF
      (gamma 1/2.4), i.e. as an 8-bit SDR BT.709 video would carry it. The tone curve acts on max(R, G, B)
      and scales the three channels together (hue kept, nothing exceeds 1): it is the identity up to 0.8
      (so everything at SDR levels, most of a typical phone clip, comes out exactly as SDR) and above that
      a Reinhard shoulder ``0.8 + 0.2 * u / (1 + u)``, ``u = (m - 0.8) / 0.2``, continuous in value and
      slope, approaching 1 asymptotically: reference white lands at 0.90 (96 % signal), 1000-nit
      highlights at 0.99, nothing clips.
    * SDR with BT.2020 or Display-P3 primaries: linearised with BT.1886 (gamma 2.4), converted to BT.709
      primaries, clipped, re-encoded. 10-bit BT.709 SDR only needs the 16-bit matrix conversion.
    * Other transfers (linear, log, SMPTE 428) and unusual YUV matrices raise ``MediaError`` naming them,
      so they show up in the skip report instead of training on wrong colours.

    Why: Mochi's own fine-tuner gets iPhone HDR colours wrong (overly bright, washed-out results)
    because it treats these clips as 8-bit BT.709: PQ/HLG code values are read as SDR gamma and the
    BT.2020 matrix/primaries as BT.709. With PQ, reference white (203 nits) sits at 58 % of the code
    range, so SDR 235/255 reads as 143/255 while a 20/255 shadow reads as 29/255; with HLG 235/255 reads
    as 183/255; every colour is desaturated. The frames come out flat, lifted and grey, and a model fine-tuned on them learns that
    look. (tests/test_video.py checks that such a naive decode is far off while this one is not.)
    Every conversion done is recorded in ``Clip.notes``.

Resize and crop
    Frames are resized with antialiased bilinear interpolation (``torch.nn.functional.interpolate`` with
    ``antialias=True``, deterministic) to cover ``height x width`` and then cropped (centre or a random
    offset shared by all frames of the clip), or plainly resized for ``crop="none"``. Resizing happens
    on the non-linear signal, before the HDR / primaries maths, so that maths only runs on output-size
    frames (a 4K frame costs ~1 s in numpy, a 480p one ~40 ms); SDR pipelines resize gamma-encoded
    signals too, and the difference is confined to high-contrast edges. Images go through
    the same path as a one-frame clip (EXIF orientation applied, embedded ICC profiles converted to sRGB).

``write_video`` writes verification videos (H.264, yuv420p, BT.709 tags) atomically.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

from fastvideo.io import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

CROP_MODES = ("center", "random", "none")
WINDOW_MODES = ("start", "center")

# HDR reference white (ITU-R BT.2408): the display luminance that SDR white 1.0 corresponds to.
REFERENCE_WHITE_NITS = 203.0
HLG_PEAK_NITS = 1000.0  # nominal display peak for the HLG OOTF (BT.2100: gamma 1.2 at 1000 nits)
TONEMAP_KNEE = 0.8  # linear level (SDR white = 1) below which the tone curve is the identity
BT1886_GAMMA = 2.4


class MediaError(Exception):
    """A media file that cannot be used; ``str(err)`` is a short one-line reason for the skip report."""


@dataclass(frozen=True)
class FrameSpec:
    """What to cut out of a media file: frame count, size, sampling rate, skips, window and crop."""

    num_frames: int
    height: int
    width: int
    train_fps: float
    skip_frames_start: int = 0
    skip_frames_end: int = 0
    window: str = "start"
    crop: str = "center"

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("skip_frames_start", "skip_frames_end"):
            _require_int(name, getattr(self, name), minimum=0)
        fps = self.train_fps
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"FrameSpec.train_fps must be a finite number > 0, got {fps!r}")
        if self.window not in WINDOW_MODES:
            raise ValueError(f"FrameSpec.window must be one of {WINDOW_MODES}, got {self.window!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"FrameSpec.crop must be one of {CROP_MODES}, got {self.crop!r}")


def _require_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; True as a frame count is always a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"FrameSpec.{name} must be an int >= {minimum}, got {value!r}")


@dataclass
class Clip:
    """Decoded frames ``[3, F, H, W]`` float32 in ``[-1, 1]`` and what was done to get them."""

    frames: torch.Tensor
    source_fps: float | None
    notes: list[str] = field(default_factory=list)
    decoded_frames: int = 0  # frames the decoder produced (shows that only the needed span was decoded)


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about a video stream (``width``/``height`` as stored, before display rotation)."""

    width: int
    height: int
    fps: float
    num_frames: int  # estimate from the header (frame count, or duration x fps)
    duration_s: float
    pix_fmt: str
    bit_depth: int
    color_primaries: str
    color_trc: str
    is_hdr: bool


# ---------------------------------------------------------------------------------------------------
# Colour tag names (ffmpeg's spellings, as ffprobe prints them)

_TRC_NAMES = {
    int(ColorTrc.BT709): "bt709",
    int(ColorTrc.UNSPECIFIED): "unspecified",
    int(ColorTrc.GAMMA22): "gamma22",
    int(ColorTrc.GAMMA28): "gamma28",
    int(ColorTrc.SMPTE170M): "smpte170m",
    int(ColorTrc.SMPTE240M): "smpte240m",
    int(ColorTrc.LINEAR): "linear",
    int(ColorTrc.LOG): "log100",
    int(ColorTrc.LOG_SQRT): "log316",
    int(ColorTrc.IEC61966_2_4): "iec61966-2-4",
    int(ColorTrc.BT1361_ECG): "bt1361e",
    int(ColorTrc.IEC61966_2_1): "iec61966-2-1",
    int(ColorTrc.BT2020_10): "bt2020-10",
    int(ColorTrc.BT2020_12): "bt2020-12",
    int(ColorTrc.SMPTE2084): "smpte2084",
    int(ColorTrc.SMPTE428): "smpte428",
    int(ColorTrc.ARIB_STD_B67): "arib-std-b67",
}
_PRIMARIES_NAMES = {
    int(ColorPrimaries.BT709): "bt709",
    int(ColorPrimaries.UNSPECIFIED): "unspecified",
    int(ColorPrimaries.BT470M): "bt470m",
    int(ColorPrimaries.BT470BG): "bt470bg",
    int(ColorPrimaries.SMPTE170M): "smpte170m",
    int(ColorPrimaries.SMPTE240M): "smpte240m",
    int(ColorPrimaries.FILM): "film",
    int(ColorPrimaries.BT2020): "bt2020",
    int(ColorPrimaries.SMPTE428): "smpte428",
    int(ColorPrimaries.SMPTE431): "smpte431",
    int(ColorPrimaries.SMPTE432): "smpte432",
    int(ColorPrimaries.EBU3213): "ebu3213",
}
# AVColorSpace (the YUV matrix); PyAV has no enum for it.
_MATRIX_NAMES = {
    0: "gbr",
    1: "bt709",
    2: "unspecified",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
    11: "smpte2085",
    12: "chroma-derived-nc",
    13: "chroma-derived-c",
    14: "ictcp",
}
# AVColorSpace -> swscale coefficients; matrices missing here are rejected.
_SWS_MATRIX = {
    1: Colorspace.ITU709,
    4: Colorspace.FCC,
    5: Colorspace.ITU601,
    6: Colorspace.ITU601,
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,
}
_HDR_TRCS = ("smpte2084", "arib-std-b67")
_UNSUPPORTED_TRCS = ("linear", "log100", "log316", "smpte428")
# Primaries close enough to BT.709 that players (and we) do not convert them.
_BT709_LIKE = ("bt709", "unspecified", "reserved", "bt470m", "bt470bg", "smpte170m", "smpte240m")


def _trc_name(value: int) -> str:
    return _TRC_NAMES.get(int(value), "reserved")


def _primaries_name(value: int) -> str:
    return _PRIMARIES_NAMES.get(int(value), "reserved")


# ---------------------------------------------------------------------------------------------------
# Colour science (numpy, float32; inputs/outputs are [..., 3] arrays)

_CHROMATICITIES = {
    # (red xy, green xy, blue xy); all with the D65 white point.
    "bt709": ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    "bt2020": ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
    "smpte432": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
}
_D65 = (0.3127, 0.3290)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)


def _rgb_to_xyz_matrix(primaries: str) -> np.ndarray:
    """RGB -> XYZ matrix from chromaticities: columns scaled so that RGB (1, 1, 1) is the white point."""
    cols = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in _CHROMATICITIES[primaries]]).T
    wx, wy = _D65
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return cols * np.linalg.solve(cols, white)


def primaries_matrix(src: str, dst: str = "bt709") -> np.ndarray:
    """3x3 matrix converting linear RGB in ``src`` primaries to linear RGB in ``dst`` primaries."""
    return np.linalg.solve(_rgb_to_xyz_matrix(dst), _rgb_to_xyz_matrix(src)).astype(np.float32)


def pq_eotf(signal: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084 EOTF: non-linear PQ signal in [0, 1] -> display luminance in nits (0..10000)."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(signal, 0.0, 1.0), 1.0 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0.0) / (c2 - c3 * p), 1.0 / m1)


def pq_inverse_eotf(nits: np.ndarray) -> np.ndarray:
    """Inverse of ``pq_eotf``: display luminance in nits -> PQ signal in [0, 1]."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.power(np.clip(nits / 10000.0, 0.0, 1.0), m1)
    return np.power((c1 + c2 * y) / (1 + c3 * y), m2)


_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * math.log(4 * _HLG_A)


def hlg_inverse_oetf(signal: np.ndarray) -> np.ndarray:
    """ARIB STD-B67 / BT.2100 HLG inverse OETF: signal in [0, 1] -> scene linear light in [0, 1]."""
    e = np.clip(signal, 0.0, 1.0)
    low = e * e / 3.0
    high = (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return np.where(e <= 0.5, low, high)


def hlg_oetf(scene: np.ndarray) -> np.ndarray:
    """HLG OETF: scene linear light in [0, 1] -> signal in [0, 1] (inverse of ``hlg_inverse_oetf``)."""
    e = np.clip(scene, 0.0, 1.0)
    low = np.sqrt(3.0 * e)
    high = _HLG_A * np.log(np.maximum(12.0 * e - _HLG_B, 1e-12)) + _HLG_C
    return np.where(e <= 1.0 / 12.0, low, high)


def hlg_eotf(signal: np.ndarray, peak_nits: float = HLG_PEAK_NITS) -> np.ndarray:
    """HLG signal (BT.2020 RGB) -> display light in nits: inverse OETF, then the BT.2100 OOTF."""
    scene = hlg_inverse_oetf(signal)
    gamma = 1.2 + 0.42 * math.log10(peak_nits / 1000.0)
    luma = np.maximum(scene @ _BT2020_LUMA, 0.0)[..., None]
    return peak_nits * np.power(luma, gamma - 1.0) * scene


def tone_map(linear: np.ndarray, knee: float = TONEMAP_KNEE) -> np.ndarray:
    """Compress linear RGB (SDR white = 1.0) into [0, 1] on max(R, G, B); identity below ``knee``."""
    rgb = np.maximum(linear, 0.0)
    peak = rgb.max(axis=-1, keepdims=True)
    u = np.maximum(peak - knee, 0.0) / (1.0 - knee)
    mapped = np.where(peak > knee, knee + (1.0 - knee) * u / (1.0 + u), peak)
    scale = np.where(peak > 0, mapped / np.maximum(peak, 1e-12), 1.0)
    return rgb * scale


def bt1886_encode(linear: np.ndarray) -> np.ndarray:
    """Inverse BT.1886 EOTF (zero black level): linear display light in [0, 1] -> SDR signal."""
    return np.power(np.clip(linear, 0.0, 1.0), 1.0 / BT1886_GAMMA)


def bt1886_decode(signal: np.ndarray) -> np.ndarray:
    """BT.1886 EOTF (zero black level): SDR signal in [0, 1] -> linear display light."""
    return np.power(np.clip(signal, 0.0, 1.0), BT1886_GAMMA)


# ---------------------------------------------------------------------------------------------------
# Per-clip colour plan: decided once from the first kept frame


@dataclass(frozen=True)
class _ColorPlan:
    matrix: int  # swscale coefficients (Colorspace)
    color_range: int  # source ColorRange
    high_precision: bool  # decode to rgb48le and post-process in float
    transfer: str  # "sdr" | "pq" | "hlg"
    to_bt709: np.ndarray | None  # linear-light primaries conversion, None if none needed
    notes: tuple[str, ...]


def _frame_bit_depth(frame: av.VideoFrame) -> int:
    return max((c.bits for c in frame.format.components if not c.is_alpha), default=8)


def _sws_matrix(frame: av.VideoFrame, primaries: str) -> int:
    """swscale YUV->RGB coefficients for the frame's tagged matrix, guessing like players when untagged."""
    tag = int(frame.colorspace)
    if tag in _SWS_MATRIX:
        return int(_SWS_MATRIX[tag])
    if frame.format.is_rgb or tag == 0:
        return int(Colorspace.ITU709)  # RGB input: swscale ignores the matrix
    if tag not in (2, 3):  # 2 unspecified, 3 reserved
        raise MediaError(f"unsupported YUV matrix '{_MATRIX_NAMES.get(tag, tag)}'")
    if primaries == "bt2020":
        return int(Colorspace.BT2020)
    return int(Colorspace.ITU709 if frame.height >= 720 else Colorspace.ITU601)


def _source_range(frame: av.VideoFrame) -> int:
    if int(frame.color_range) in (int(ColorRange.MPEG), int(ColorRange.JPEG)):
        return int(frame.color_range)
    # Untagged: only the yuvj* formats are full range by convention.
    return int(ColorRange.JPEG if frame.format.name.startswith("yuvj") else ColorRange.MPEG)


def _primaries_conversion(primaries: str, transfer: str) -> tuple[np.ndarray | None, list[str]]:
    if primaries in ("bt2020", "smpte432"):
        return primaries_matrix(primaries), []
    if transfer != "sdr" and primaries in ("unspecified", "reserved"):
        # HDR video is BT.2020 in practice; an untagged HDR stream is assumed to be too.
        return primaries_matrix("bt2020"), ["untagged HDR primaries assumed BT.2020"]
    if primaries in _BT709_LIKE:
        return None, []
    if transfer != "sdr":
        raise MediaError(f"unsupported primaries '{primaries}' for HDR video")
    return None, [f"primaries '{primaries}' not converted (treated as BT.709)"]


def _color_plan(frame: av.VideoFrame) -> _ColorPlan:
    trc = _trc_name(frame.color_trc)
    primaries = _primaries_name(frame.color_primaries)
    if trc in _UNSUPPORTED_TRCS:
        raise MediaError(f"unsupported transfer characteristic '{trc}' (cannot convert to SDR BT.709)")
    transfer = {"smpte2084": "pq", "arib-std-b67": "hlg"}.get(trc, "sdr")
    to_bt709, notes = _primaries_conversion(primaries, transfer)
    bits = _frame_bit_depth(frame)
    high_precision = bits > 8 or transfer != "sdr" or to_bt709 is not None
    label = {"bt2020": "BT.2020", "smpte432": "Display P3"}.get(primaries, primaries)
    if transfer == "pq":
        notes.append(f"HDR PQ/{label} {bits}-bit tone-mapped to 8-bit BT.709")
    elif transfer == "hlg":
        notes.append(f"HDR HLG/{label} {bits}-bit tone-mapped to 8-bit BT.709")
    elif to_bt709 is not None:
        notes.append(f"SDR {label} primaries {bits}-bit converted to BT.709")
    elif bits > 8:
        notes.append(f"{bits}-bit SDR converted to RGB at 16-bit precision")
    return _ColorPlan(
        matrix=_sws_matrix(frame, primaries),
        color_range=_source_range(frame),
        high_precision=high_precision,
        transfer=transfer,
        to_bt709=to_bt709,
        notes=tuple(notes),
    )


def _frame_signal(frame: av.VideoFrame, plan: _ColorPlan) -> torch.Tensor:
    """Decoded frame -> float32 ``[3, H, W]`` non-linear RGB signal in [0, 1] (8 or 16-bit precision)."""
    convert = dict(
        src_colorspace=plan.matrix, src_color_range=plan.color_range, dst_color_range=ColorRange.JPEG
    )
    if not plan.high_precision:
        rgb, scale = frame.to_ndarray(format="rgb24", **convert), 1.0 / 255
    else:
        rgb, scale = frame.to_ndarray(format="rgb48le", **convert), 1.0 / 65535
    # torch's (threaded) int -> float conversion is ~1.5x faster than numpy's on 1080p frames.
    return torch.from_numpy(rgb).permute(2, 0, 1).float().mul_(scale)


def _needs_transfer(plan: _ColorPlan) -> bool:
    return plan.transfer != "sdr" or plan.to_bt709 is not None


def _signal_to_bt709(signal: np.ndarray, plan: _ColorPlan) -> np.ndarray:
    """RGB signal ``[..., 3]`` in the source transfer/primaries -> BT.709 SDR signal in [0, 1]."""
    if plan.transfer == "pq":
        linear = pq_eotf(signal) / REFERENCE_WHITE_NITS
    elif plan.transfer == "hlg":
        linear = hlg_eotf(signal) / REFERENCE_WHITE_NITS
    else:
        linear = bt1886_decode(signal)
    if plan.to_bt709 is not None:
        linear = linear @ plan.to_bt709.T
    if plan.transfer != "sdr":
        linear = tone_map(linear)
    return bt1886_encode(linear).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Geometry: rotate, resize to cover, crop


@dataclass(frozen=True)
class _CropBox:
    resize_h: int
    resize_w: int
    top: int
    left: int


def _crop_box(src_h: int, src_w: int, spec: FrameSpec, rng: np.random.Generator) -> _CropBox:
    if spec.crop == "none":
        return _CropBox(spec.height, spec.width, 0, 0)
    scale = max(spec.height / src_h, spec.width / src_w)
    # Round, but never below the target so the crop always fits.
    rh = max(spec.height, round(src_h * scale))
    rw = max(spec.width, round(src_w * scale))
    if spec.crop == "center":
        return _CropBox(rh, rw, (rh - spec.height) // 2, (rw - spec.width) // 2)
    top = int(rng.integers(0, rh - spec.height + 1))
    left = int(rng.integers(0, rw - spec.width + 1))
    return _CropBox(rh, rw, top, left)


def _resize_crop(image: torch.Tensor, box: _CropBox, spec: FrameSpec) -> torch.Tensor:
    """``[3, H, W]`` float in [0, 1] -> ``[3, height, width]`` float32 in [0, 1]."""
    x = image
    if x.shape[1:] != (box.resize_h, box.resize_w):
        x = F.interpolate(
            x[None], size=(box.resize_h, box.resize_w), mode="bilinear", antialias=True, align_corners=False
        )[0]
    x = x[:, box.top : box.top + spec.height, box.left : box.left + spec.width]
    return x.clamp(0.0, 1.0).contiguous()


def _to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 - 1.0


def _rotate(image: torch.Tensor, degrees_ccw: int) -> torch.Tensor:
    """Rotate a ``[3, H, W]`` image counter-clockwise (the display matrix convention)."""
    k = round(degrees_ccw / 90) % 4
    return torch.rot90(image, k, dims=(1, 2)) if k else image


# ---------------------------------------------------------------------------------------------------
# Opening files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError("file not found")
    if not path.is_file():
        raise MediaError("not a regular file")
    if path.stat().st_size == 0:
        raise MediaError("zero-byte file")


def _one_line(err: BaseException) -> str:
    # FFmpeg errors read "[Errno N] reason: 'file'"; the reason alone is what a report needs.
    text = getattr(err, "strerror", None) if isinstance(err, av.FFmpegError) else None
    text = " ".join((text or str(err)).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _has_container_signature(path: Path) -> bool:
    """Whether the file starts like an mp4/mov, Matroska/WebM or AVI file."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head[:4] in (
        b"\x1aE\xdf\xa3",
        b"RIFF",
    )


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        # A real container that will not open is usually cut short (e.g. an mp4 whose index was at the end).
        what = "truncated or corrupt" if _has_container_signature(path) else "not a video file"
        raise MediaError(f"{what} (could not open: {_one_line(err)})") from err


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MediaError(f"no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


# ---------------------------------------------------------------------------------------------------
# Timeline: where the stream starts, how long it is, at what rate


@dataclass(frozen=True)
class _Timeline:
    start_s: float
    duration_s: float
    fps: float
    header_frames: int
    tolerance_s: float  # how far after a wanted time a frame may start and still count as "at" it


def _stream_fps(stream: av.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate, stream.codec_context.framerate):
        if rate and rate > 0:
            return float(rate)
    raise MediaError("unknown frame rate (no rate in the stream header)")


def _scan_duration(container: av.container.InputContainer, stream: av.VideoStream, start_s: float) -> float:
    """Duration from packet timestamps (demux only, no decoding), for headers that lack it."""
    end = None
    tb = float(stream.time_base)
    for packet in container.demux(stream):
        if packet.pts is not None:
            stop = (packet.pts + (packet.duration or 0)) * tb
            end = stop if end is None else max(end, stop)
    container.seek(0)
    if end is None:
        raise MediaError("unknown duration (no timestamps in the stream)")
    return end - start_s


def _timeline(container: av.container.InputContainer, stream: av.VideoStream) -> _Timeline:
    fps = _stream_fps(stream)
    tb = float(stream.time_base) if stream.time_base else 1e-6
    start = stream.start_time * tb if stream.start_time is not None else 0.0
    if stream.frames and stream.frames > 0:
        duration = stream.frames / fps
    elif stream.duration:
        duration = stream.duration * tb
    elif container.duration:
        duration = container.duration / av.time_base - start
    else:
        duration = _scan_duration(container, stream, start)
    header_frames = stream.frames if stream.frames and stream.frames > 0 else round(duration * fps)
    # Timestamps are rounded to the time base (1 ms in mkv/webm); stay well inside half a frame.
    tolerance = min(max(0.05 / fps, 1.01 * tb), 0.4 / fps)
    return _Timeline(start, max(duration, 0.0), fps, header_frames, tolerance)


def _wanted_times(tl: _Timeline, spec: FrameSpec) -> list[float]:
    """Presentation times (seconds) of the output frames; MediaError if the clip is too short."""
    usable_start = tl.start_s + spec.skip_frames_start / tl.fps
    usable = tl.duration_s - (spec.skip_frames_start + spec.skip_frames_end) / tl.fps
    available = max(0, math.floor((usable + tl.tolerance_s) * spec.train_fps))
    if available < spec.num_frames:
        raise MediaError(
            f"too short: {tl.duration_s:.2f} s gives {available} frames at TRAIN_FPS={spec.train_fps:g}, "
            f"need {spec.num_frames} (+ skip {spec.skip_frames_start}/{spec.skip_frames_end})"
        )
    offset = 0.0
    if spec.window == "center":
        slack = usable - spec.num_frames / spec.train_fps
        # Snap to the source frame grid so the window starts exactly on a frame.
        offset = max(0.0, math.floor(slack / 2 * tl.fps + 1e-6) / tl.fps)
    t0 = usable_start + offset
    return [t0 + k / spec.train_fps for k in range(spec.num_frames)]


# ---------------------------------------------------------------------------------------------------
# Decoding and frame selection


class _SeekMissed(Exception):
    """The seek landed after the first wanted time (odd index); decode again from the start."""


class _Decoder:
    """Iterates decoded frames, counting them and turning decode errors into an end of stream."""

    def __init__(self, container: av.container.InputContainer, stream: av.VideoStream) -> None:
        self.container = container
        self.stream = stream
        self.decoded = 0
        self.error: str | None = None

    def frames(self) -> Iterator[av.VideoFrame]:
        try:
            for frame in self.container.decode(self.stream):
                self.decoded += 1
                yield frame
        except (av.FFmpegError, OSError, ValueError) as err:
            # Corrupt data mid-stream: stop here; the caller decides whether enough was decoded.
            self.error = _one_line(err)


def _frame_time(frame: av.VideoFrame, fallback: float) -> float:
    return float(frame.time) if frame.pts is not None else fallback


def _frame_duration(frame: av.VideoFrame, tl: _Timeline) -> float:
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    return 1.0 / tl.fps


def _select(
    decoder: _Decoder, times: list[float], tl: _Timeline, *, seeked: bool
) -> Iterator[tuple[av.VideoFrame, int]]:
    """Yield (frame, repeats) in order: each wanted time takes the latest frame starting at or before it."""
    k = 0
    prev = None
    prev_t = tl.start_s
    last = times[-1]
    for frame in decoder.frames():
        t = _frame_time(frame, prev_t + 1.0 / tl.fps)
        n = 0
        while k + n < len(times) and times[k + n] < t - tl.tolerance_s:
            n += 1
        if n:
            if prev is None:
                if seeked:
                    raise _SeekMissed
                prev = frame  # first frame starts a hair after the header's start time
            yield prev, n
            k += n
            if k == len(times):
                return
        prev, prev_t = frame, t
        if t >= last - tl.tolerance_s:
            yield frame, len(times) - k
            return
    yield from _finish_at_eof(decoder, prev, prev_t, times[k:], tl)


def _finish_at_eof(
    decoder: _Decoder, prev: av.VideoFrame | None, prev_t: float, remaining: list[float], tl: _Timeline
) -> Iterator[tuple[av.VideoFrame, int]]:
    """End of stream before the last wanted time: fine only if the last frame still covers it."""
    if prev is not None and remaining[-1] < prev_t + _frame_duration(prev, tl) + tl.tolerance_s:
        yield prev, len(remaining)
        return
    reason = f" ({decoder.error})" if decoder.error else ""
    if prev is None:
        raise MediaError(
            f"truncated or corrupt: no frame decodable from {remaining[0]:.2f} s, "
            f"stream header says {tl.header_frames} frames ({tl.duration_s:.2f} s){reason}"
        )
    got = round((prev_t - tl.start_s) * tl.fps) + 1
    raise MediaError(
        f"truncated or corrupt: decoded {got} frames, stream header says {tl.header_frames}{reason}"
    )


def _seek(container: av.container.InputContainer, stream: av.VideoStream, t: float) -> None:
    # Seeks to the keyframe at or before t (stream time base); decoding forward reaches t exactly.
    container.seek(int(math.floor(t / float(stream.time_base))), stream=stream, backward=True)


class _FrameConverter:
    """Converts kept frames to output tensors; colour plan and crop are fixed by the first frame."""

    def __init__(self, spec: FrameSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.plan: _ColorPlan | None = None
        self.box: _CropBox | None = None
        self.notes: list[str] = []

    def __call__(self, frame: av.VideoFrame) -> torch.Tensor:
        if self.plan is None:
            self.plan = _color_plan(frame)
            self.notes.extend(self.plan.notes)
            if frame.rotation:
                self.notes.append(f"rotated {frame.rotation} degrees (display matrix)")
        signal = _rotate(_frame_signal(frame, self.plan), frame.rotation)
        if self.box is None:
            self.box = _crop_box(signal.shape[1], signal.shape[2], self.spec, self.rng)
        small = _resize_crop(signal, self.box, self.spec)
        if _needs_transfer(self.plan):
            # The colour maths runs on the output-size frame (4K HDR in numpy would cost ~1 s a frame);
            # resizing in the signal domain is what SDR pipelines do anyway.
            hwc = _signal_to_bt709(small.permute(1, 2, 0).numpy(), self.plan)
            small = torch.from_numpy(hwc).permute(2, 0, 1).contiguous()
        return _to_model_range(small)


def _collect(
    decoder: _Decoder, times: list[float], tl: _Timeline, convert: _FrameConverter, *, seeked: bool
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for frame, repeats in _select(decoder, times, tl, seeked=seeked):
        out.extend([convert(frame)] * repeats)  # duplicates share one conversion
    return out


def _decode_window(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    times: list[float],
    tl: _Timeline,
    convert: _FrameConverter,
) -> tuple[list[torch.Tensor], int]:
    """Decode the span covering ``times`` (seeking when it starts later); returns frames and decode count."""
    wasted = 0
    if times[0] > tl.start_s + tl.tolerance_s:
        _seek(container, stream, times[0])
        decoder = _Decoder(container, stream)
        try:
            return _collect(decoder, times, tl, convert, seeked=True), decoder.decoded
        except _SeekMissed:
            wasted = decoder.decoded
            container.seek(0)  # back to the very beginning and decode forward
    decoder = _Decoder(container, stream)
    return _collect(decoder, times, tl, convert, seeked=False), wasted + decoder.decoded


def load_video(path: str | os.PathLike, spec: FrameSpec, *, rng: np.random.Generator | None = None) -> Clip:
    """Decode ``spec.num_frames`` frames at ``spec.train_fps`` from a video, decoding only the needed span."""
    path = Path(path)
    _check_file(path)
    rng = rng if rng is not None else np.random.default_rng(0)
    container = _open_container(path)
    try:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"  # frame + slice threads; large win on long GOPs at 1080p
        tl = _timeline(container, stream)
        times = _wanted_times(tl, spec)
        convert = _FrameConverter(spec, rng)
        frames, decoded = _decode_window(container, stream, times, tl, convert)
    except (av.FFmpegError, OSError) as err:
        raise MediaError(f"decode failed: {_one_line(err)}") from err
    finally:
        container.close()
    return Clip(torch.stack(frames, dim=1), tl.fps, convert.notes, decoded)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read stream facts from the header (no decoding); MediaError if it is not a usable video."""
    path = Path(path)
    _check_file(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container)
        tl = _timeline(container, stream)
        cc = stream.codec_context
        trc = _trc_name(cc.color_trc)
        fmt = cc.format
        bits = max((c.bits for c in fmt.components if not c.is_alpha), default=8) if fmt else 8
        return VideoInfo(
            width=cc.width,
            height=cc.height,
            fps=tl.fps,
            num_frames=tl.header_frames,
            duration_s=tl.duration_s,
            pix_fmt=cc.pix_fmt or "unknown",
            bit_depth=bits,
            color_primaries=_primaries_name(cc.color_primaries),
            color_trc=trc,
            is_hdr=trc in _HDR_TRCS,
        )
    except (av.FFmpegError, OSError) as err:
        raise MediaError(f"probe failed: {_one_line(err)}") from err
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------
# Images


def _srgb_from_icc(img, icc: bytes | None, notes: list[str]):
    """Convert an RGB image with an embedded ICC profile (e.g. iPhone Display P3 JPEGs) to sRGB."""
    if not icc:
        return img
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != "RGB":
            return img  # e.g. a CMYK profile; PIL's own CMYK->RGB conversion already ran
        name = ImageCms.getProfileDescription(src).strip() or "unnamed"
        if "srgb" in name.lower():
            return img
        out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        notes.append(f"ICC profile '{name}' converted to sRGB")
        return out
    except (ImportError, OSError, ValueError, ImageCms.PyCMSError) as err:
        notes.append(f"ICC profile ignored ({_one_line(err)})")
        return img


def _image_to_rgb(img, notes: list[str]) -> torch.Tensor:
    """PIL image -> float32 ``[3, H, W]`` in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale PNG: PIL's convert("RGB") would clip it to 8 bits.
        grey = torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0).clamp(0.0, 1.0)
        return grey[None].expand(3, -1, -1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped")
    icc = img.info.get("icc_profile")
    img = _srgb_from_icc(img.convert("RGB"), icc, notes)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | os.PathLike, spec: FrameSpec, *, rng: np.random.Generator | None = None) -> Clip:
    """Load an image as a one-frame clip, resized and cropped like video frames."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    rng = rng if rng is not None else np.random.default_rng(0)
    notes: list[str] = []
    try:
        with Image.open(path) as img:
            img.load()
            image = _image_to_rgb(ImageOps.exif_transpose(img), notes)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise MediaError(f"not an image file (could not open: {_one_line(err)})") from err
    box = _crop_box(image.shape[1], image.shape[2], spec, rng)
    frame = _to_model_range(_resize_crop(image, box, spec))
    return Clip(frame[:, None], None, notes, 1)


def load_media(path: str | os.PathLike, spec: FrameSpec, *, rng: np.random.Generator | None = None) -> Clip:
    """Load a video or an image (by extension) as a ``Clip``; MediaError for anything unusable."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return load_video(path, spec, rng=rng)
    if ext in IMAGE_EXTENSIONS:
        return load_image(path, spec, rng=rng)
    raise MediaError(f"unsupported file extension '{ext or '(none)'}'")


# ---------------------------------------------------------------------------------------------------
# Writing verification videos


def _to_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """float ``[3, F, H, W]`` in [-1, 1] or uint8 ``[F, H, W, 3]`` -> uint8 ``[F, H, W, 3]``."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype == torch.uint8:
            frames = frames.cpu().numpy()
        else:
            if frames.ndim != 4 or frames.shape[0] != 3:
                raise ValueError(f"float frames must be [3, F, H, W], got {tuple(frames.shape)}")
            scaled = ((frames.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
            return scaled.to(torch.uint8).permute(1, 2, 3, 0).numpy()
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"uint8 frames must be [F, H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def _pad_even(frames: np.ndarray) -> np.ndarray:
    # yuv420p needs even sizes; replicate the last row/column rather than rescale.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: float) -> None:
    """Write frames as an H.264 yuv420p BT.709 mp4 (atomically: the file appears whole or not at all)."""
    data = _pad_even(_to_uint8_frames(frames))
    if data.shape[0] == 0:
        raise ValueError("write_video needs at least one frame")
    # ffmpeg 8+ takes colour tags from the frames, so setparams tags them; scale picks the BT.709 matrix.
    tags = "color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"
    vf = f"scale=out_color_matrix=bt709:out_range=tv,setparams={tags}"
    params = ["-vf", vf, "-crf", "18", "-movflags", "+faststart"]
    with atomic_path(path) as tmp:
        # imageio picks its writer from the file suffix and atomic_path's temp name ends in ".tmp-XXXX",
        # so write a sibling that ends in .mp4 (still marked ".tmp-" for stale-file cleanup), then move it.
        staged = tmp.with_name(tmp.name + ".mp4")
        try:
            _write_mp4(staged, data, fps, params)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)


def _write_mp4(path: Path, frames: np.ndarray, fps: float, params: list[str]) -> None:
    import imageio.v2 as imageio

    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=float(fps),
        codec="libx264",
        pixelformat="yuv420p",
        quality=None,
        macro_block_size=1,
        output_params=params,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
