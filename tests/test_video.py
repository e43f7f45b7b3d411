"""Tests for fastvideo.media.video on small real media files made with ffmpeg / PIL.

Frame-selection tests encode each frame's index as a 10-bit barcode (black/white vertical bars) so
the decoded output says exactly which source frame landed where. The HDR tests build PQ and HLG
BT.2020 10-bit HEVC clips from known SDR colours (the inverse of the loader's pipeline) and check that
the loader recovers those colours while a naive 8-bit BT.709 decode does not.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image

from fastvideo.media import video as V
from fastvideo.media.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Clip,
    FrameSpec,
    MediaError,
    load_image,
    load_media,
    load_video,
    probe_video,
    write_video,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
BAR_W, BARS, BAR_H = 8, 10, 16  # barcode frames are 80 x 16
X264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12")


# ---------------------------------------------------------------------------------------------------
# Helpers


def ffmpeg_encode(
    path: Path,
    frames: np.ndarray,
    fps: float = 30,
    *,
    codec: tuple[str, ...] = X264,
    tags: tuple[str, str, str] = ("bt709", "bt709", "bt709"),
    pix_fmt: str = "rgb24",
    extra_vf: str = "",
    after: tuple[str, ...] = (),
) -> Path:
    """Encode raw RGB frames ``[F, H, W, 3]`` (uint8 rgb24 or uint16 rgb48le) with the ffmpeg binary.

    ``tags`` = (primaries, transfer, matrix): the RGB->YUV conversion uses the matrix, and the tags are
    set on the frames with ``setparams`` (ffmpeg 8+ takes them from the frames, not from -color_trc).
    """
    f, h, w, _ = frames.shape
    primaries, trc, matrix = tags
    sws_matrix = "bt2020" if matrix.startswith("bt2020") else matrix
    vf = f"scale=out_color_matrix={sws_matrix}:out_range=tv,"
    vf += f"setparams=color_primaries={primaries}:color_trc={trc}:colorspace={matrix}:range=tv{extra_vf}"
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    cmd += ["-vf", vf, *codec, "-color_primaries", primaries, "-color_trc", trc, "-colorspace", matrix]
    cmd += [*after, str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def barcode_frames(indices: range | list[int]) -> np.ndarray:
    """Frame i shows i in binary: bar b (left to right) is white when bit b is set."""
    out = np.zeros((len(indices), BAR_H, BAR_W * BARS, 3), np.uint8)
    for n, i in enumerate(indices):
        for b in range(BARS):
            if (i >> b) & 1:
                out[n, :, b * BAR_W : (b + 1) * BAR_W] = 255
    return out


def read_barcodes(clip: Clip) -> list[int]:
    """Decode the frame index from each output frame (needs crop='none' at 16 x 80)."""
    luma = clip.frames.mean(dim=0)  # [F, H, W]
    bars = luma[:, 4:-4].reshape(luma.shape[0], -1, BARS, BAR_W)[..., 2:-2].mean(dim=(1, 3))
    bits = (bars > 0).int()
    return [int(sum(int(v) << b for b, v in enumerate(row))) for row in bits]


def barcode_spec(num_frames: int, train_fps: float, **kw) -> FrameSpec:
    return FrameSpec(num_frames, BAR_H, BAR_W * BARS, train_fps, crop="none", **kw)


def make_barcode_clip(path: Path, n: int, fps: float = 30, **kw) -> Path:
    return ffmpeg_encode(path, barcode_frames(range(n)), fps, **kw)


def patch_image(colors: np.ndarray, size: int = 32) -> np.ndarray:
    """Side-by-side flat square patches, float RGB in [0, 1], shape [size, size * n, 3]."""
    return np.concatenate([np.broadcast_to(c, (size, size, 3)) for c in colors], axis=1).astype(np.float32)


def patch_means(image: np.ndarray, n: int, size: int = 32, margin: int = 8) -> np.ndarray:
    """Mean colour of each patch's interior (away from chroma-subsampling edges): [n, 3]."""
    return np.stack(
        [
            image[margin:-margin, i * size + margin : (i + 1) * size - margin].mean(axis=(0, 1))
            for i in range(n)
        ]
    )


def clip_to_image(clip: Clip, index: int = 0) -> np.ndarray:
    """Output frame as float RGB [H, W, 3] in [0, 1]."""
    return ((clip.frames[:, index].permute(1, 2, 0).numpy() + 1.0) / 2.0).astype(np.float32)


# Mid-grey, skin tone, saturated red, near-white: typical content across the SDR range.
SDR_COLORS = np.array([[128, 128, 128], [224, 172, 145], [200, 30, 30], [235, 235, 235]], np.float32) / 255


def sdr_to_pq(sdr: np.ndarray) -> np.ndarray:
    """Inverse of the loader: BT.709 SDR signal -> display light (white = 203 nits) -> BT.2020 -> PQ."""
    linear = V.bt1886_decode(sdr) @ V.primaries_matrix("bt709", "bt2020").T
    return V.pq_inverse_eotf(linear * V.REFERENCE_WHITE_NITS)


def sdr_to_hlg(sdr: np.ndarray) -> np.ndarray:
    """Inverse of the loader: SDR -> display light in BT.2020 -> inverse HLG OOTF (1000 nits) -> OETF."""
    display = V.bt1886_decode(sdr) @ V.primaries_matrix("bt709", "bt2020").T
    display = display * V.REFERENCE_WHITE_NITS / V.HLG_PEAK_NITS
    luma = np.maximum(display @ V._BT2020_LUMA, 1e-12)[..., None]
    return V.hlg_oetf(display * luma ** ((1 - 1.2) / 1.2))


def encode_hevc10(
    path: Path, signal: np.ndarray, trc: str, primaries: str = "bt2020", frames: int = 4
) -> Path:
    """Encode a float RGB signal image as 10-bit HEVC with the given transfer/primaries tags."""
    matrix = "bt2020nc" if primaries == "bt2020" else "bt709"
    raw = np.round(np.clip(signal, 0, 1) * 65535).astype("<u2")
    x265 = f"colorprim={primaries}:transfer={trc}:colormatrix={matrix}:range=limited:crf=8:log-level=error"
    codec = ("-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", x265, "-tag:v", "hvc1")
    stack = np.repeat(raw[None], frames, 0)
    return ffmpeg_encode(path, stack, codec=codec, tags=(primaries, trc, matrix), pix_fmt="rgb48le")


def naive_decode(path: Path) -> np.ndarray:
    """What an HDR-unaware loader gets: the first frame as 8-bit BT.709 limited-range RGB."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        rgb = frame.to_ndarray(
            format="rgb24",
            src_colorspace=Colorspace.ITU709,
            src_color_range=ColorRange.MPEG,
            dst_color_range=ColorRange.JPEG,
        )
    return rgb.astype(np.float32) / 255


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """20 s barcode clip at 30 fps (600 frames), a keyframe every second."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return make_barcode_clip(path, 600, codec=(*X264, "-g", "30", "-bf", "2"))


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """1 s barcode clip at 30 fps (30 frames)."""
    return make_barcode_clip(tmp_path_factory.mktemp("c30") / "c30.mp4", 30)


# ---------------------------------------------------------------------------------------------------
# FrameSpec


def test_extension_tuples_are_lower_case():
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=0), "num_frames"),
        (dict(height=-1), "height"),
        (dict(width=2.5), "width"),
        (dict(num_frames=True), "num_frames"),
        (dict(train_fps=0), "train_fps"),
        (dict(train_fps=float("nan")), "train_fps"),
        (dict(skip_frames_start=-1), "skip_frames_start"),
        (dict(skip_frames_end=1.0), "skip_frames_end"),
        (dict(window="middle"), "window"),
        (dict(crop="left"), "crop"),
    ],
)
def test_frame_spec_rejects_bad_values(kwargs, message):
    base = dict(num_frames=5, height=8, width=8, train_fps=30.0)
    with pytest.raises(ValueError, match=message):
        FrameSpec(**{**base, **kwargs})


# ---------------------------------------------------------------------------------------------------
# Frame selection


def test_barcode_roundtrip_at_source_rate(clip30):
    clip = load_video(clip30, barcode_spec(30, 30))
    assert read_barcodes(clip) == list(range(30))
    assert clip.source_fps == pytest.approx(30.0)


def test_half_rate_takes_every_other_frame(clip30):
    clip = load_video(clip30, barcode_spec(15, 15))
    assert read_barcodes(clip) == list(range(0, 30, 2))


def test_double_rate_duplicates_frames(tmp_path):
    path = make_barcode_clip(tmp_path / "ten.mp4", 10)
    clip = load_video(path, barcode_spec(20, 60))
    assert read_barcodes(clip) == [i // 2 for i in range(20)]
    assert clip.frames.shape == (3, 20, BAR_H, BAR_W * BARS)


def test_center_window(clip30):
    clip = load_video(clip30, barcode_spec(10, 30, window="center"))
    assert read_barcodes(clip) == list(range(10, 20))


def test_skip_start_with_start_window(clip30):
    clip = load_video(clip30, barcode_spec(10, 15, skip_frames_start=5))
    assert read_barcodes(clip) == list(range(5, 25, 2))


def test_skips_shift_the_center_window(clip30):
    # usable frames 4..23 (20 frames), 10 wanted -> centred at 9..18
    clip = load_video(clip30, barcode_spec(10, 30, skip_frames_start=4, skip_frames_end=6, window="center"))
    assert read_barcodes(clip) == list(range(9, 19))


def test_skip_end_counts_against_length(clip30):
    load_video(clip30, barcode_spec(20, 30, skip_frames_end=10))  # exactly fits
    with pytest.raises(MediaError, match=r"too short: 1\.00 s gives 19 frames at TRAIN_FPS=30, need 20"):
        load_video(clip30, barcode_spec(20, 30, skip_frames_start=5, skip_frames_end=6))


def test_too_short_message(clip30):
    with pytest.raises(MediaError) as info:
        load_video(clip30, barcode_spec(37, 30))
    assert str(info.value) == "too short: 1.00 s gives 30 frames at TRAIN_FPS=30, need 37 (+ skip 0/0)"


def test_variable_frame_rate_uses_timestamps(tmp_path):
    # 20 frames; frames 10.. are shown 5 frame intervals late (a 5-frame hold on frame 9).
    path = ffmpeg_encode(
        tmp_path / "vfr.mkv",
        barcode_frames(range(20)),
        extra_vf=",setpts='(N+5*gte(N\\,10))/(30*TB)'",
        after=("-fps_mode", "passthrough"),
    )
    clip = load_video(path, barcode_spec(25, 30))
    assert read_barcodes(clip) == list(range(10)) + [9] * 5 + list(range(10, 20))


def test_webm_millisecond_timestamps(tmp_path):
    path = make_barcode_clip(tmp_path / "c.webm", 12, codec=("-c:v", "libvpx-vp9", "-lossless", "1"))
    assert read_barcodes(load_video(path, barcode_spec(12, 30))) == list(range(12))
    assert read_barcodes(load_video(path, barcode_spec(4, 10, window="center"))) == [0, 3, 6, 9]


def test_stream_without_duration_in_header(tmp_path):
    # Written to a pipe, the WebM muxer cannot go back to store the duration (like browser recordings).
    webm = tmp_path / "pipe.webm"
    cmd = [
        FFMPEG,
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=gray:size=80x16:rate=30",
        "-frames:v",
        "12",
    ]
    with open(webm, "wb") as out:
        subprocess.run([*cmd, "-c:v", "libvpx-vp9", "-f", "webm", "pipe:1"], stdout=out, check=True)
    with av.open(str(webm)) as container:
        assert container.duration is None and not container.streams.video[0].duration
    assert probe_video(webm).num_frames == 12
    assert load_video(webm, barcode_spec(6, 15, window="center")).frames.shape[1] == 6
    with pytest.raises(MediaError, match="too short: 0.40 s gives 12 frames"):
        load_video(webm, barcode_spec(13, 30))


def test_start_window_decodes_only_the_needed_frames(long_clip):
    clip = load_video(long_clip, barcode_spec(37, 30))
    assert read_barcodes(clip) == list(range(37))
    assert clip.decoded_frames <= 40  # of 600


def test_center_window_seeks(long_clip):
    clip = load_video(long_clip, barcode_spec(37, 30, window="center"))
    # slack 563 frames -> window starts at frame 281; decoding starts at the keyframe at 270
    assert read_barcodes(clip) == list(range(281, 318))
    assert clip.decoded_frames < 100


def test_skip_seeks_for_start_window(long_clip):
    clip = load_video(long_clip, barcode_spec(37, 15, skip_frames_start=300))
    assert read_barcodes(clip) == list(range(300, 374, 2))
    assert clip.decoded_frames < 120


def test_seek_that_lands_late_falls_back_to_decoding_from_the_start(long_clip, monkeypatch):
    real_seek = V._seek
    monkeypatch.setattr(V, "_seek", lambda container, stream, t: real_seek(container, stream, t + 3.0))
    clip = load_video(long_clip, barcode_spec(5, 30, window="center"))
    assert read_barcodes(clip) == list(range(297, 302))


def test_probe_video(long_clip):
    info = probe_video(long_clip)
    assert (info.width, info.height, info.num_frames) == (80, 16, 600)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(20.0)
    assert (info.pix_fmt, info.bit_depth, info.color_trc, info.is_hdr) == ("yuv420p", 8, "bt709", False)


# ---------------------------------------------------------------------------------------------------
# Resize, crop, range, images


def thirds_image(h: int, w: int) -> np.ndarray:
    """Left third red, middle green, right third blue (uint8)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 3, 0] = 255
    img[:, w // 3 : 2 * w // 3, 1] = 255
    img[:, 2 * w // 3 :, 2] = 255
    return img


def test_center_crop_takes_the_middle(tmp_path):
    path = tmp_path / "thirds.png"
    Image.fromarray(thirds_image(64, 192)).save(path)
    clip = load_media(path, FrameSpec(1, 32, 32, 30.0))  # resized to 32 x 96, middle 32 columns kept
    assert clip.frames.shape == (3, 1, 32, 32) and clip.source_fps is None
    interior = clip_to_image(clip)[:, 2:-2]
    np.testing.assert_allclose(interior.mean(axis=(0, 1)), [0, 1, 0], atol=0.02)


def test_center_crop_on_video(tmp_path):
    path = ffmpeg_encode(tmp_path / "thirds.mp4", np.repeat(thirds_image(32, 96)[None], 3, 0))
    clip = load_video(path, FrameSpec(3, 16, 16, 30.0))
    image = clip_to_image(clip, 2)[:, 3:-3]
    assert image[..., 1].mean() > 0.9 and image[..., 0].mean() < 0.1 and image[..., 2].mean() < 0.1


def test_crop_none_squashes_whole_frame(tmp_path):
    path = tmp_path / "thirds.png"
    Image.fromarray(thirds_image(32, 96)).save(path)
    image = clip_to_image(load_image(path, FrameSpec(1, 16, 24, 30.0, crop="none")))
    assert image.shape == (16, 24, 3)
    np.testing.assert_allclose(image[:, :6].mean(axis=(0, 1)), [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(image[:, -6:].mean(axis=(0, 1)), [0, 0, 1], atol=0.02)


def test_random_crop_is_a_window_and_seeded(tmp_path):
    columns = np.broadcast_to(np.arange(96, dtype=np.uint8)[None, :, None] * 2, (32, 96, 3))
    path = tmp_path / "ramp.png"
    Image.fromarray(np.ascontiguousarray(columns)).save(path)
    spec = FrameSpec(1, 32, 32, 30.0, crop="random")
    offsets = set()
    for seed in range(6):
        row = np.round(clip_to_image(load_image(path, spec, rng=np.random.default_rng(seed)))[0, :, 0] * 255)
        np.testing.assert_allclose(np.diff(row), 2, atol=1)  # contiguous columns, no resize
        offsets.add(int(row[0]) // 2)
    assert len(offsets) > 1 and all(0 <= o <= 64 for o in offsets)
    a = load_image(path, spec, rng=np.random.default_rng(3)).frames
    assert torch.equal(a, load_image(path, spec, rng=np.random.default_rng(3)).frames)


def test_output_range_and_dtype(clip30):
    clip = load_media(clip30, FrameSpec(4, 8, 40, 30.0, window="center"))  # frames 13..16, half size
    assert clip.frames.dtype == torch.float32 and clip.frames.shape == (3, 4, 8, 40)
    assert clip.frames.min() >= -1.0 and clip.frames.max() <= 1.0
    assert clip.frames.min() < -0.9 and clip.frames.max() > 0.9  # black and white bars


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_images_are_one_frame_clips(tmp_path, ext):
    path = tmp_path / f"img{ext}"
    Image.fromarray(np.full((40, 60, 3), (200, 100, 50), np.uint8)).save(path)
    clip = load_media(path, FrameSpec(37, 24, 24, 30.0))
    assert clip.frames.shape == (3, 1, 24, 24) and clip.source_fps is None and clip.decoded_frames == 1
    np.testing.assert_allclose(clip_to_image(clip).mean(axis=(0, 1)) * 255, [200, 100, 50], atol=3)


def test_image_exif_orientation_applied(tmp_path):
    img = Image.fromarray(thirds_image(30, 60))  # stored landscape, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    image = clip_to_image(load_image(path, FrameSpec(1, 60, 30, 30.0, crop="none")))
    assert image[:15, :, 0].mean() > 0.8  # red ends up on top


def test_video_display_rotation_applied(tmp_path):
    plain = ffmpeg_encode(tmp_path / "plain.mp4", np.repeat(thirds_image(16, 48)[None], 3, 0))
    rotated = tmp_path / "rotated.mp4"
    cmd = [FFMPEG, "-loglevel", "error", "-y", "-display_rotation", "90", "-i", str(plain), "-c", "copy"]
    subprocess.run([*cmd, str(rotated)], check=True, capture_output=True)
    clip = load_video(rotated, FrameSpec(3, 48, 16, 30.0, crop="none"))
    image = clip_to_image(clip)
    # 90 degrees counter-clockwise (as ffmpeg displays it): the left (red) third ends up at the bottom.
    assert image[-12:, :, 0].mean() > 0.8 and image[:12, :, 2].mean() > 0.8
    assert any("rotated 90" in note for note in clip.notes)


# ---------------------------------------------------------------------------------------------------
# Bad inputs


def write_truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def faststart_clip(tmp_path_factory) -> Path:
    """4 s clip with the index up front, so a truncated copy still opens."""
    path = tmp_path_factory.mktemp("fs") / "fs.mp4"
    return make_barcode_clip(path, 120, codec=(*X264, "-g", "15"), after=("-movflags", "+faststart"))


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(MediaError, match="^zero-byte file$"):
        load_media(tmp_path / "empty.mp4", barcode_spec(4, 30))


def test_text_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match=r"^not a video file \(could not open: "):
        load_media(path, barcode_spec(4, 30))


def test_truncated_without_index_fails_to_open(tmp_path, long_clip):
    path = write_truncated(long_clip, tmp_path / "half.mp4")  # moov atom is at the end: lost
    with pytest.raises(MediaError, match=r"^truncated or corrupt \(could not open: "):
        load_video(path, barcode_spec(4, 30))


def test_truncated_that_cannot_supply_the_frames(tmp_path, faststart_clip):
    path = write_truncated(faststart_clip, tmp_path / "half.mp4")
    for window in ("start", "center"):
        with pytest.raises(MediaError, match=r"^truncated or corrupt: .*stream header says 120"):
            load_video(path, barcode_spec(100, 30, window=window))


def test_truncated_that_still_covers_the_request_loads(tmp_path, faststart_clip):
    path = write_truncated(faststart_clip, tmp_path / "half.mp4")
    assert read_barcodes(load_video(path, barcode_spec(10, 30))) == list(range(10))


def test_audio_only_file(tmp_path):
    path = tmp_path / "audio.mp4"
    cmd = [FFMPEG, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac"]
    subprocess.run([*cmd, str(path)], check=True, capture_output=True)
    with pytest.raises(MediaError, match=r"^no video stream \(streams: audio\)$"):
        load_media(path, barcode_spec(4, 30))
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(path)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(MediaError, match="unsupported file extension '.txt'"):
        load_media(tmp_path / "a.txt", barcode_spec(4, 30))
    with pytest.raises(MediaError, match="file not found"):
        load_media(tmp_path / "gone.mov", barcode_spec(4, 30))


def test_corrupt_image(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(MediaError, match=r"^not an image file \(could not open: "):
        load_media(path, FrameSpec(1, 8, 8, 30.0))


def test_upper_case_extension_dispatches(tmp_path, clip30):
    path = tmp_path / "UPPER.MP4"
    path.write_bytes(clip30.read_bytes())
    assert load_media(path, barcode_spec(2, 30)).frames.shape[1] == 2


def test_unsupported_transfer_is_reported(tmp_path):
    path = make_barcode_clip(tmp_path / "linear.mp4", 4, tags=("bt709", "linear", "bt709"))
    with pytest.raises(MediaError, match="unsupported transfer characteristic 'linear'"):
        load_video(path, barcode_spec(2, 30))


# ---------------------------------------------------------------------------------------------------
# HDR and high bit depth


@pytest.mark.parametrize("trc, to_signal", [("smpte2084", sdr_to_pq), ("arib-std-b67", sdr_to_hlg)])
def test_hdr_is_tone_mapped_back_to_sdr(tmp_path, trc, to_signal):
    sdr = patch_image(SDR_COLORS)
    path = encode_hevc10(tmp_path / "hdr.mov", to_signal(sdr), trc)
    info = probe_video(path)
    assert (info.is_hdr, info.bit_depth, info.color_trc, info.color_primaries) == (True, 10, trc, "bt2020")

    clip = load_video(path, FrameSpec(2, 32, 32 * len(SDR_COLORS), 30.0, crop="none"))
    got = patch_means(clip_to_image(clip), len(SDR_COLORS))
    error = np.abs(got - SDR_COLORS).mean(axis=1) * 255
    assert error.max() < 4, f"per-patch mean abs error (/255): {error}"
    kind = "PQ" if trc == "smpte2084" else "HLG"
    assert clip.notes == [f"HDR {kind}/BT.2020 10-bit tone-mapped to 8-bit BT.709"]

    half = load_video(path, FrameSpec(1, 16, 16 * len(SDR_COLORS), 30.0))  # resized before the maths
    half_error = np.abs(patch_means(clip_to_image(half), len(SDR_COLORS), 16, 4) - SDR_COLORS).mean(axis=1)
    assert half_error.max() * 255 < 4

    naive = patch_means(naive_decode(path), len(SDR_COLORS))
    assert np.abs(naive - SDR_COLORS).mean() * 255 > 20  # the test can fail: naive decoding is far off


def test_tone_map_identity_below_knee_and_bounded():
    x = np.array([[0.1, 0.5, 0.79], [0.4, 0.2, 0.1], [2.0, 1.0, 0.5], [50.0, 50.0, 50.0]], np.float32)
    y = V.tone_map(x)
    np.testing.assert_allclose(y[:2], x[:2], rtol=1e-6)
    assert (y <= 1.0).all() and y[3, 0] > 0.99
    np.testing.assert_allclose(y[2] / y[2, 0], x[2] / x[2, 0], rtol=1e-5)  # hue kept


def test_pq_reference_white_and_inverse():
    assert V.pq_inverse_eotf(np.array(203.0)) == pytest.approx(0.5807, abs=1e-3)  # BT.2408: 58 %
    nits = np.array([0.0, 0.1, 100.0, 1000.0, 10000.0])
    np.testing.assert_allclose(V.pq_eotf(V.pq_inverse_eotf(nits)), nits, rtol=1e-4, atol=1e-4)


def test_hlg_reference_white():
    # BT.2408: HLG 75 % signal is reference white, 203 nits on a 1000-nit display.
    white = V.hlg_eotf(np.full(3, 0.75, np.float32))
    np.testing.assert_allclose(white, 203.0, rtol=0.01)


def test_ten_bit_sdr_bt709(tmp_path):
    sdr = patch_image(SDR_COLORS)
    path = encode_hevc10(tmp_path / "sdr10.mov", sdr, "bt709", primaries="bt709")
    clip = load_video(path, FrameSpec(2, 32, 32 * len(SDR_COLORS), 30.0, crop="none"))
    got = patch_means(clip_to_image(clip), len(SDR_COLORS))
    assert np.abs(got - SDR_COLORS).mean(axis=1).max() * 255 < 2
    assert clip.notes == ["10-bit SDR converted to RGB at 16-bit precision"]


def test_sdr_bt2020_primaries_are_converted(tmp_path):
    wide = V.bt1886_encode(V.bt1886_decode(patch_image(SDR_COLORS)) @ V.primaries_matrix("bt709", "bt2020").T)
    path = encode_hevc10(tmp_path / "sdr2020.mov", wide, "bt2020-10")
    clip = load_video(path, FrameSpec(2, 32, 32 * len(SDR_COLORS), 30.0, crop="none"))
    got = patch_means(clip_to_image(clip), len(SDR_COLORS))
    assert np.abs(got - SDR_COLORS).mean(axis=1).max() * 255 < 3
    assert clip.notes == ["SDR BT.2020 primaries 10-bit converted to BT.709"]


def test_unsupported_hdr_primaries_are_reported(tmp_path):
    path = encode_hevc10(tmp_path / "odd.mov", sdr_to_pq(patch_image(SDR_COLORS[:1])), "smpte2084", "film")
    with pytest.raises(MediaError, match="unsupported primaries 'film' for HDR video"):
        load_video(path, FrameSpec(1, 16, 16, 30.0))


# ---------------------------------------------------------------------------------------------------
# write_video


def test_write_video_float_roundtrip(tmp_path):
    frames = torch.empty(3, 6, 32, 48)
    color = torch.tensor([200, 100, 50]) / 127.5 - 1.0
    frames[:] = color[:, None, None, None]
    out = tmp_path / "out" / "verify.mp4"
    write_video(out, frames, fps=24)
    assert sorted(p.name for p in out.parent.iterdir()) == ["verify.mp4"]  # no temp files left
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height, info.fps) == (6, 48, 32, 24.0)
    assert (info.color_primaries, info.color_trc, info.pix_fmt) == ("bt709", "bt709", "yuv420p")
    clip = load_video(out, FrameSpec(6, 32, 48, 24.0, crop="none"))
    np.testing.assert_allclose(clip_to_image(clip, 5).mean(axis=(0, 1)) * 255, [200, 100, 50], atol=3)


def test_write_video_uint8_odd_size_and_overwrite(tmp_path):
    out = tmp_path / "v.mp4"
    write_video(out, np.zeros((2, 8, 8, 3), np.uint8), fps=30)
    write_video(out, np.full((5, 15, 21, 3), 128, np.uint8), fps=30)  # odd sizes are padded to even
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (5, 16, 22)


def test_write_video_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", torch.zeros(4, 2, 8, 8), fps=30)
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8), fps=30)
