"""Tests for fastvideo.data_preprocess.synthetic: the clips are real, move as captioned, are deterministic.

Run: pytest tests/test_synthetic.py -q
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fastvideo.data_preprocess.synthetic import (
    BACKGROUND,
    BAD_ITEMS,
    COLOURS,
    DECODE_PROBLEMS,
    DIRECTIONS,
    SHAPES,
    SOURCE_PROBLEMS,
    ShapeSpec,
    add_bad_items,
    clip_frames,
    describe_clip,
    main,
    make_synthetic_dataset,
    matching_properties,
    plan_clips,
    render_frame,
    shape_coverage,
    truncation_point,
)

SECONDS, FPS, HEIGHT, WIDTH = 1.0, 30, 96, 160


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, num_videos=8, num_images=2, seconds=SECONDS, fps=FPS, height=HEIGHT, width=WIDTH, seed=0
    )


def decode(path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream


def shape_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels clearly brighter than the dark background."""
    return np.abs(frame.astype(int) - np.array(BACKGROUND)).sum(axis=-1) > 60


def centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(shape_mask(frame))
    assert len(xs) > 30, "the shape should be visible"
    return np.array([xs.mean(), ys.mean()])


def nearest_colour(frame: np.ndarray) -> str:
    mask = shape_mask(frame)
    core = frame[mask].astype(float).mean(axis=0)
    return min(COLOURS, key=lambda c: np.linalg.norm(core - np.array(COLOURS[c])))


def caption_words(caption: str) -> tuple[str, str, str | None]:
    words = caption.split()
    assert words[0] in ("a", "an")
    return words[1], words[2], (words[4] if len(words) == 5 else None)


def test_layout_and_captions(dataset):
    assert sorted(dataset.captions) == [f"clip_{i:03d}.mp4" for i in range(8)] + [
        "img_000.png",
        "img_001.png",
    ]
    for name, caption in dataset.captions.items():
        assert (dataset.mochi_dir / name).is_file()
        assert (dataset.mochi_dir / name).with_suffix(".txt").read_text(encoding="utf-8").strip() == caption
        colour, shape, direction = caption_words(caption)
        assert colour in COLOURS and shape in SHAPES
        assert (direction in DIRECTIONS) == name.endswith(".mp4")
    assert len(set(dataset.captions.values())) == len(dataset.captions)
    assert (dataset.cogvideox_dir / "prompts.txt").is_file() and (
        dataset.cogvideox_dir / "videos.txt"
    ).is_file()
    assert dataset.csv_path.read_text().splitlines()[0] == "caption,video"
    assert set(json.loads(dataset.jsonl_path.read_text().splitlines()[0])) == {"caption", "video"}
    media_folder, json_name = dataset.merge_path.read_text().strip().split(",")
    entries = json.loads((dataset.merge_path.parent / json_name).read_text())
    video = entries[0]
    assert video["resolution"] == {"width": WIDTH, "height": HEIGHT}
    assert (
        video["fps"] == FPS
        and video["duration"] == SECONDS
        and video["cap"] == [dataset.captions[video["path"]]]
    )
    assert (dataset.merge_path.parent / media_folder).resolve() == dataset.mochi_dir.resolve()
    manifest = json.loads((dataset.root / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["captions"] == dataset.captions


def test_clips_are_real_and_move_as_captioned(dataset):
    directions_seen = set()
    for name, caption in dataset.captions.items():
        if not name.endswith(".mp4"):
            continue
        frames, stream = decode(dataset.mochi_dir / name)
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert abs(len(frames) - SECONDS * FPS) <= 1
        assert frames[0].shape == (HEIGHT, WIDTH, 3)
        colour, _, direction = caption_words(caption)
        directions_seen.add(direction)
        start, end = centroid(frames[0]), centroid(frames[-1])
        axis, sign = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}[direction]
        travel = (end - start) * sign
        assert travel[axis] > 0.4 * (WIDTH, HEIGHT)[axis], (name, caption, start, end)
        assert abs(travel[1 - axis]) < 2, "no drift across the direction of motion"
        # Smooth: the middle frame's centroid is about halfway.
        middle = centroid(frames[len(frames) // 2])
        assert np.allclose(middle, (start + end) / 2, atol=3)
        assert nearest_colour(frames[0]) == colour and nearest_colour(frames[-1]) == colour
    assert len(directions_seen) >= 3


def test_describe_clip_reads_back_every_caption(dataset):
    # From the mp4 files (compression noise, soft edges) ...
    for name, caption in dataset.captions.items():
        if name.endswith(".mp4"):
            assert describe_clip(np.stack(decode(dataset.mochi_dir / name)[0])).caption == caption, name
    # ... and for every combination at the preprocessing size, where shapes are smallest.
    for colour, shape, direction in itertools.product(COLOURS, SHAPES, DIRECTIONS):
        spec = ShapeSpec(colour, shape, direction, 0.3)
        described = describe_clip(np.stack(list(clip_frames(spec, 25, 64, 96))))
        assert described.caption == spec.caption
        assert abs(described.across - 0.3) < 0.2
    still = np.stack(list(clip_frames(ShapeSpec("red", "circle", None, 0.5), 5, 64, 96)))
    assert describe_clip(still).caption == "a red circle"
    empty = np.zeros((5, 64, 96, 3), np.uint8) + np.asarray(BACKGROUND, np.uint8)
    assert describe_clip(empty) is None


def test_matching_properties_counts_what_the_prompt_names():
    assert matching_properties("a red circle moving right", ShapeSpec("red", "square", "right", 0.5)) == (
        2,
        3,
    )
    assert matching_properties("a red circle", ShapeSpec("red", "circle", "up", 0.5)) == (2, 2)
    assert matching_properties("a blue square moving up", None) == (0, 3)
    assert matching_properties("something else", ShapeSpec("red", "circle", None, 0.5)) == (0, 0)


def test_describe_clips_script_scores_sampler_named_files(dataset, tmp_path, capsys):
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import describe_clips

    name, caption = next((n, c) for n, c in dataset.captions.items() if n.endswith(".mp4"))
    right = tmp_path / f"000-{caption.replace(' ', '-')}-seed0.mp4"
    shutil.copy(dataset.mochi_dir / name, right)
    other = caption.replace(caption.split()[-1], "nowhere")  # the direction is not the one shown
    wrong = tmp_path / f"001-{other.replace(' ', '-')}-seed3.mp4"
    shutil.copy(dataset.mochi_dir / name, wrong)
    assert describe_clips.main([str(right), str(wrong)]) == 0
    out = capsys.readouterr().out
    assert f"asked '{caption}', shows '{caption}'" in out
    assert "5 of 5 asked properties" in out  # the wrong file names no direction: 3 + 2
    (tmp_path / "002-empty-seed0.mp4").write_bytes(b"")
    assert (
        describe_clips.main(
            [str(tmp_path / "missing.mp4"), str(tmp_path / "002-empty-seed0.mp4"), str(right)]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert captured.err.count("cannot read") == 2 and "3 of 3 asked properties" in captured.out


def test_video_strip_lays_out_frames_of_each_video_under_its_prompt(dataset, tmp_path, capsys):
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import video_strip

    name, caption = next((n, c) for n, c in dataset.captions.items() if n.endswith(".mp4"))
    video = tmp_path / f"000-{caption.replace(' ', '-')}-seed7.mp4"
    shutil.copy(dataset.mochi_dir / name, video)
    out = tmp_path / "strip.png"
    assert (
        video_strip.main([str(video), str(video), "--output", str(out), "--frames", "3", "--scale", "2"]) == 0
    )
    frames, _ = decode(video)
    h, w = frames[0].shape[:2]
    sheet = np.asarray(Image.open(out).convert("RGB"))
    gap, label = video_strip.GAP, video_strip.LABEL
    assert sheet.shape == (2 * (label + 2 * h + gap), 3 * (2 * w + gap) - gap, 3)
    assert video_strip.label(video) == f"{caption} (seed 7)"
    for i, frame in enumerate((frames[0], frames[(len(frames) - 1) // 2], frames[-1])):
        x = i * (2 * w + gap)
        tile = sheet[label : label + 2 * h, x : x + 2 * w]
        # Nearest-neighbour enlargement: every second pixel is the frame's own pixel.
        assert np.abs(tile[::2, ::2].astype(int) - frame.astype(int)).mean() < 1.0
        assert nearest_colour(tile) == caption.split()[1]
    assert video_strip.main([str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "no.png")]) == 2
    assert not (tmp_path / "no.png").exists() and "cannot read" in capsys.readouterr().err


def test_images_are_still_pngs_of_the_captioned_colour(dataset):
    for name, caption in dataset.captions.items():
        if name.endswith(".png"):
            image = np.asarray(Image.open(dataset.mochi_dir / name).convert("RGB"))
            assert image.shape == (HEIGHT, WIDTH, 3)
            assert nearest_colour(image) == caption_words(caption)[0]
            assert "moving" not in caption


def test_same_seed_same_data_other_seed_other_data(dataset, tmp_path):
    again = make_synthetic_dataset(
        tmp_path / "again",
        num_videos=8,
        num_images=2,
        seconds=SECONDS,
        fps=FPS,
        height=HEIGHT,
        width=WIDTH,
        seed=0,
    )
    assert again.captions == dataset.captions
    first_a = decode(dataset.mochi_dir / "clip_000.mp4")[0][0]
    first_b = decode(again.mochi_dir / "clip_000.mp4")[0][0]
    assert np.array_equal(first_a, first_b)
    assert plan_clips(1, 8) != plan_clips(0, 8)
    assert plan_clips(0, 3) == plan_clips(0, 8)[:3], "more clips extend, never reshuffle, the set"


def test_regenerating_clears_stale_files_but_never_foreign_folders(tmp_path):
    root = tmp_path / "ds"
    make_synthetic_dataset(root, num_videos=3, num_images=1, seconds=0.2, fps=10, height=32, width=32)
    small = make_synthetic_dataset(root, num_videos=1, num_images=0, seconds=0.2, fps=10, height=32, width=32)
    assert sorted(p.name for p in small.mochi_dir.iterdir()) == ["clip_000.mp4", "clip_000.txt"]
    assert not list(root.rglob("*.tmp-*"))
    foreign = tmp_path / "mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(foreign, num_videos=1, num_images=0)
    assert (foreign / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 33},
        {"width": 16},
        {"seconds": 0.01},
        {"num_videos": 0, "num_images": 0},
        {"num_images": -1},
    ],
)
def test_bad_parameters_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "x", **kwargs)


def test_bad_items_are_broken_in_the_promised_way(tmp_path):
    bad = add_bad_items(tmp_path, height=64, width=96)
    assert bad == BAD_ITEMS
    assert set(bad.values()) == SOURCE_PROBLEMS | DECODE_PROBLEMS
    assert (tmp_path / "bad_zero_bytes.mp4").stat().st_size == 0
    for name in ("bad_zero_bytes.mp4", "bad_not_a_video.mp4"):
        with pytest.raises(av.error.InvalidDataError):
            av.open(str(tmp_path / name))
    # Truncated: opens and announces every frame, but the frame data runs out.
    with av.open(str(tmp_path / "bad_truncated.mp4")) as container:
        stream = container.streams.video[0]
        announced, decoded = stream.frames, 0
        with pytest.raises(av.error.FFmpegError):
            for _ in container.decode(stream):
                decoded += 1
        assert decoded < announced == 60
    assert len(decode(tmp_path / "bad_too_short.mp4")[0]) == 9
    for name in ("bad_no_caption.mp4", "bad_empty_caption.mp4", "bad_caption_not_utf8.mp4"):
        assert len(decode(tmp_path / name)[0]) == 60, "only the caption is wrong"
    assert not (tmp_path / "bad_no_caption.txt").exists()
    assert (tmp_path / "bad_empty_caption.txt").read_text().strip() == ""
    raw = (tmp_path / "bad_caption_not_utf8.txt").read_bytes()
    assert b"\xe9" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    for name, kind in bad.items():
        assert (tmp_path / name).with_suffix(".txt").exists() == (kind != "no_caption")


def test_truncation_point_keeps_a_leading_index():
    moov_first = (
        (16).to_bytes(4, "big") + b"moov" + bytes(8) + (8 + 90).to_bytes(4, "big") + b"mdat" + bytes(90)
    )
    assert truncation_point(moov_first) == 16 + (len(moov_first) - 16) // 3
    moov_last = (
        (8 + 90).to_bytes(4, "big") + b"mdat" + bytes(90) + (16).to_bytes(4, "big") + b"moov" + bytes(8)
    )
    assert truncation_point(moov_last) == len(moov_last) // 3


def test_shapes_are_drawn_where_and_how_asked():
    ys = np.arange(64, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(64, dtype=np.float32)[None, :] + 0.5
    areas = {}
    for shape in SHAPES:
        cov = shape_coverage(shape, 32.0, 32.0, 10.0, xs, ys)
        assert cov.min() == 0.0 and cov.max() == 1.0 and cov[32, 32] == 1.0
        areas[shape] = cov.sum()
    assert areas["triangle"] < areas["square"] and areas["triangle"] < areas["circle"]
    assert abs(areas["circle"] - np.pi * 100) < 10
    with pytest.raises(ValueError):
        shape_coverage("hexagon", 0, 0, 1, xs, ys)
    frame = render_frame(ShapeSpec("white", "circle", "right", 0.5), 0.0, 64, 64)
    assert frame.dtype == np.uint8 and tuple(frame[0, -1]) == BACKGROUND
    assert ShapeSpec("orange", "square", None, 0.5).caption == "an orange square"
    assert ShapeSpec("red", "circle", "up", 0.5).caption == "a red circle moving up"


def test_cli_writes_a_dataset_with_bad_items(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--output", str(out), "--num_videos", "2", "--num_images", "1", "--seconds", "0.5"]
    assert (
        main([*args, "--fps", "10", "--height", "32", "--width", "48", "--seed", "5", "--with_bad_items"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "--data_dir" in printed and "--data_merge_path" in printed
    assert (out / "mochi" / "clip_001.mp4").is_file() and (out / "mochi" / "bad_truncated.mp4").is_file()
    assert (out / "with_missing_path" / "csv" / "metadata.csv").is_file()
    with pytest.raises(SystemExit, match="even"):
        main(["--output", str(tmp_path / "odd"), "--height", "33"])
