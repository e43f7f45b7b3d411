"""Tests for fastvideo.data_preprocess.sources: every input format, per-item problems, naming.

Run: pytest tests/test_sources.py -q
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fastvideo.data_preprocess.sources import (
    Item,
    Skipped,
    SourceError,
    collect_items,
    detect_format,
)
from fastvideo.data_preprocess.synthetic import (
    BAD_ITEMS,
    DECODE_PROBLEMS,
    MISSING_MEDIA_NAME,
    SyntheticDataset,
    add_bad_items,
    make_synthetic_dataset,
    write_lists_with_missing_path,
)

# The reason sources gives for each bad-item kind it is responsible for.
EXPECTED_REASONS = {
    "no_caption": "caption file missing (expected bad_no_caption.txt)",
    "empty_caption": "caption is empty",
    "caption_not_utf8": "caption is not UTF-8 text",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> SyntheticDataset:
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        root, num_videos=4, num_images=2, seconds=0.5, fps=10, height=64, width=96, seed=3
    )


def pairs(items: list[Item]) -> set[tuple[str, str]]:
    return {(item.media_path.name, item.caption) for item in items}


def touch(path: Path, data: bytes = b"\x00") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


FORMATS = {
    "mochi": lambda ds: {"data_dir": str(ds.mochi_dir)},
    "cogvideox": lambda ds: {"data_dir": str(ds.cogvideox_dir)},
    "csv_dir": lambda ds: {"data_dir": str(ds.csv_path.parent)},
    "csv_file": lambda ds: {"data_merge_path": str(ds.csv_path)},
    "jsonl_dir": lambda ds: {"data_dir": str(ds.jsonl_path.parent)},
    "jsonl_file": lambda ds: {"data_merge_path": str(ds.jsonl_path)},
    "merge": lambda ds: {"data_merge_path": str(ds.merge_path)},
}


# ----------------------------------------------------------------------------- good data, every format


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_alone_yields_exactly_the_synthetic_items(dataset, fmt):
    items, skipped = collect_items(**FORMATS[fmt](dataset))
    assert skipped == []
    assert pairs(items) == set(dataset.captions.items())
    assert len({i.name for i in items}) == len(items)
    for item in items:
        assert item.media_path.is_absolute() and item.media_path.is_file()
        assert item.name == item.media_path.stem
        assert item.kind == ("image" if item.media_path.suffix == ".png" else "video")
        assert item.origin


def test_detect_format_on_each_synthetic_folder(dataset):
    assert detect_format(dataset.mochi_dir) == "mochi"
    assert detect_format(dataset.cogvideox_dir) == "cogvideox"
    assert detect_format(dataset.csv_path.parent) == "table"
    assert detect_format(dataset.jsonl_path.parent) == "table"
    # The root holds only subfolders: read as a Mochi tree, it still finds exactly the media.
    assert detect_format(dataset.root) == "mochi"
    items, _ = collect_items(data_dir=str(dataset.root))
    assert pairs(items) == set(dataset.captions.items())


def test_list_order_follows_the_file_and_origins_name_the_entry(dataset):
    items, _ = collect_items(data_merge_path=str(dataset.merge_path))
    assert [i.media_path.name for i in items] == list(dataset.captions)
    assert items[0].origin == "videos.json item 1"
    cog, _ = collect_items(data_dir=str(dataset.cogvideox_dir))
    assert [i.origin for i in cog[:2]] == ["prompts.txt line 1", "prompts.txt line 2"]
    csv_items, _ = collect_items(data_merge_path=str(dataset.csv_path))
    assert csv_items[0].origin == "metadata.csv line 2"  # line 1 is the header


def test_relative_paths_do_not_depend_on_the_working_directory(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for fmt in FORMATS:
        items, skipped = collect_items(**FORMATS[fmt](dataset))
        assert not skipped and pairs(items) == set(dataset.captions.items()), fmt


# ----------------------------------------------------------------------------- bad items


def test_bad_items_in_a_mochi_folder(dataset, tmp_path):
    folder = tmp_path / "mochi"
    shutil.copytree(dataset.mochi_dir, folder)
    bad = add_bad_items(folder, height=64, width=96, fps=10)
    assert bad == BAD_ITEMS
    items, skipped = collect_items(data_dir=str(folder))

    # Good items are all still there; decode-level problems have captions, so sources keeps them
    # (it never opens media) and the decoder must catch them.
    decode_bad = {name for name, kind in bad.items() if kind in DECODE_PROBLEMS}
    names = {i.media_path.name for i in items}
    assert names == set(dataset.captions) | decode_bad
    assert (folder / "bad_zero_bytes.mp4").stat().st_size == 0

    reasons = {Path(s.what).name: s.reason for s in skipped}
    expected = {name: EXPECTED_REASONS[kind] for name, kind in bad.items() if kind in EXPECTED_REASONS}
    assert reasons.keys() == expected.keys()
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert all(s.what.startswith(str(folder)) for s in skipped)


@pytest.mark.parametrize("fmt", ["cogvideox", "csv_file", "jsonl_file", "merge"])
def test_list_formats_with_a_missing_media_path(dataset, tmp_path, fmt):
    missing = write_lists_with_missing_path(dataset, tmp_path / "lists")
    items, skipped = collect_items(**FORMATS[fmt](missing))
    assert pairs(items) == set(dataset.captions.items())
    assert len(skipped) == 1
    assert skipped[0].what.endswith(MISSING_MEDIA_NAME)
    assert skipped[0].reason == "media file not found"


def test_table_without_the_named_columns_lists_what_it_found(tmp_path):
    table = write(tmp_path / "meta.csv", "text,clip\nhello,a.mp4\n")
    with pytest.raises(SourceError) as err:
        collect_items(data_merge_path=str(table))
    message = str(err.value)
    assert "'text'" in message and "'clip'" in message
    assert "--caption_column" in message and "--video_column" in message
    items, _ = collect_items(data_merge_path=str(table), caption_column="text", video_column="clip")
    assert items == []  # a.mp4 does not exist, but the columns now match
    jsonl = write(tmp_path / "j" / "meta.jsonl", '{"prompt": "x", "video": "a.mp4"}\n')
    with pytest.raises(SourceError, match="'prompt', 'video'"):
        collect_items(data_dir=str(jsonl.parent))


def test_per_row_problems_in_a_table(tmp_path):
    touch(tmp_path / "good.mp4")
    touch(tmp_path / "anim.gif")
    touch(tmp_path / "still.JPG")
    rows = [
        {"caption": "  fine\n caption ", "video": "good.mp4"},
        {"caption": "   ", "video": "good.mp4"},
        {"caption": "a gif", "video": "anim.gif"},
        {"caption": "gone", "video": "nowhere/gone.mp4"},
        {"caption": ["", "second caption"], "video": "still.JPG"},
        {"caption": 7, "video": "good.mp4"},
        {"caption": "no path"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + "{not json\n\n[1, 2]\n"
    write(tmp_path / "meta.jsonl", text)
    items, skipped = collect_items(data_dir=str(tmp_path))
    assert [(i.media_path.name, i.caption, i.kind) for i in items] == [
        ("good.mp4", "fine caption", "video"),
        ("still.JPG", "second caption", "image"),
    ]
    reasons = [s.reason for s in skipped]
    assert reasons[0] == "caption is empty"
    assert reasons[1].startswith("unknown media extension .gif")
    assert skipped[2] == Skipped("nowhere/gone.mp4", "media file not found")
    assert reasons[3] == "caption is not text (got int)"
    assert skipped[4] == Skipped("meta.jsonl line 7", "media path is empty or missing")
    assert reasons[5].startswith("line is not valid JSON") and skipped[5].what == "meta.jsonl line 8"
    assert reasons[6] == "line is not a JSON object (got list)"


def test_csv_quoted_multiline_caption_and_absolute_path(tmp_path):
    media = touch(tmp_path / "elsewhere" / "clip.mp4")
    write(tmp_path / "t" / "meta.csv", f'video,caption\n{media},"a cat,\n  sleeping"\n')
    items, skipped = collect_items(data_merge_path=str(tmp_path / "t" / "meta.csv"))
    assert skipped == []
    assert items == [Item("clip", media, "a cat, sleeping", "video", "meta.csv line 3")]


# ----------------------------------------------------------------------------- Mochi folders


def test_mochi_captions_bom_newlines_and_ignored_files(tmp_path):
    touch(tmp_path / "b" / "clip2.mov")
    (tmp_path / "b" / "clip2.txt").write_bytes("\ufeff  two\r\nlines \n\n".encode())
    touch(tmp_path / "a.mp4")
    write(tmp_path / "a.txt", "first")
    write(tmp_path / "orphan.txt", "caption without media")
    write(tmp_path / "README.md", "not data")
    touch(tmp_path / "notes.json")
    touch(tmp_path / ".hidden" / "x.mp4")
    write(tmp_path / ".hidden" / "x.txt", "hidden")
    touch(tmp_path / "._a.mp4")
    items, skipped = collect_items(data_dir=str(tmp_path))
    assert skipped == []  # hidden files (macOS "._" forks, .hidden/) are not data
    assert [(i.name, i.caption, i.origin) for i in items] == [
        ("a", "first", "a.mp4"),
        ("clip2", "two lines", "b/clip2.mov"),
    ]


def test_mochi_media_is_not_opened(tmp_path):
    touch(tmp_path / "empty.mp4", b"")
    write(tmp_path / "empty.txt", "zero bytes, caught later by the decoder")
    items, skipped = collect_items(data_dir=str(tmp_path))
    assert [i.name for i in items] == ["empty"] and skipped == []


def test_duplicate_stems_are_disambiguated_deterministically(tmp_path):
    for sub in ("x", "y"):
        touch(tmp_path / sub / "clip.mp4")
        write(tmp_path / sub / "clip.txt", f"clip in {sub}")
    touch(tmp_path / "y" / "clip.png")  # same stem and same caption file, other media
    touch(tmp_path / "z" / "Clip.mp4")  # differs only in case: clashes on macOS/Windows
    write(tmp_path / "z" / "Clip.txt", "upper")
    touch(tmp_path / "z" / "solo.mp4")
    write(tmp_path / "z" / "solo.txt", "solo")
    items, _ = collect_items(data_dir=str(tmp_path))
    again, _ = collect_items(data_dir=str(tmp_path))
    assert items == again
    names = [i.name for i in items]
    assert len({n.lower() for n in names}) == len(names) == 5
    for item in items:
        if item.media_path.stem.lower() == "clip":
            digest = hashlib.sha1(str(item.media_path.resolve()).encode()).hexdigest()[:8]
            assert item.name == f"{item.media_path.stem}-{digest}"
    assert "solo" in names


def test_same_file_listed_twice_gets_distinct_names(tmp_path):
    touch(tmp_path / "media" / "my clip (1).mp4")
    entries = [{"path": "my clip (1).mp4", "cap": "one"}, {"path": "my clip (1).mp4", "cap": ["two"]}]
    write(tmp_path / "list.json", json.dumps(entries))
    write(tmp_path / "merge.txt", "# comment\n\nmedia , list.json\n")
    items, _ = collect_items(data_merge_path=str(tmp_path / "merge.txt"))
    assert [i.caption for i in items] == ["one", "two"]
    assert items[0].name != items[1].name
    assert all(
        set(i.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for i in items
    )


# ----------------------------------------------------------------------------- CogVideoX roots


def test_cogvideox_pairs_lines_and_checks_counts(tmp_path):
    touch(tmp_path / "videos" / "a.mp4")
    touch(tmp_path / "videos" / "b.mp4")
    write(tmp_path / "prompts.txt", "caption a\n\ncaption b\n\n")
    write(tmp_path / "videos.txt", "videos/a.mp4\nvideos/missing.mp4\nvideos/b.mp4\n")
    assert detect_format(tmp_path) == "cogvideox"
    items, skipped = collect_items(data_dir=str(tmp_path))
    assert [(i.name, i.caption) for i in items] == [("a", "caption a"), ("b", "caption b")]
    assert skipped == [Skipped("videos/missing.mp4", "media file not found")]
    write(tmp_path / "videos.txt", "videos/a.mp4\nvideos/b.mp4\n")
    with pytest.raises(SourceError, match="prompts.txt has 3 lines but videos.txt has 2"):
        collect_items(data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- configuration errors


def test_detect_format_rules(tmp_path):
    write(tmp_path / "a.csv", "caption,video\n")
    assert detect_format(tmp_path) == "table"
    write(tmp_path / "b.jsonl", "")
    assert detect_format(tmp_path) == "mochi"  # two tables: ambiguous, not a table root
    write(tmp_path / "prompts.txt", "")
    assert detect_format(tmp_path) == "mochi"
    write(tmp_path / "videos.txt", "")
    assert detect_format(tmp_path) == "cogvideox"


def test_unusable_configurations_raise(tmp_path):
    merge = write(tmp_path / "merge.txt", "media,missing.json\n")
    (tmp_path / "media").mkdir()
    cases = [
        ({}, "neither was given"),
        ({"data_dir": str(tmp_path), "data_merge_path": str(merge)}, "both were given"),
        ({"data_dir": str(tmp_path / "nope")}, "not an existing folder"),
        ({"data_dir": str(merge)}, "is a file"),
        ({"data_merge_path": str(tmp_path / "nope.txt")}, "not an existing file"),
        ({"data_merge_path": str(write(tmp_path / "x.parquet", ""))}, "unknown data_merge_path format"),
        ({"data_merge_path": str(merge)}, "JSON file not found"),
        ({"data_merge_path": str(write(tmp_path / "m2.txt", "only_one_field\n"))}, "line 1: expected"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SourceError, match=message):
            collect_items(**kwargs)
    with pytest.raises(SourceError, match="not an existing folder"):
        detect_format(tmp_path / "nope")
    assert issubclass(SourceError, ValueError)


def test_cli_lists_items_and_skips(dataset, tmp_path, capsys):
    from fastvideo.data_preprocess.sources import main

    missing = write_lists_with_missing_path(dataset, tmp_path / "lists")
    assert main(["--data_merge_path", str(missing.merge_path)]) == 0
    out = capsys.readouterr().out
    assert f"SKIPPED {MISSING_MEDIA_NAME}: media file not found" in out
    assert out.strip().endswith(f"{len(dataset.captions)} items, 1 skipped")
    with pytest.raises(SystemExit):
        main([])
