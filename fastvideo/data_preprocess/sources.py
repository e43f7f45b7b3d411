"""Read the dataset input formats fastvideo accepts into one flat list of (media, caption) items.

Four layouts are understood; exactly one of ``data_merge_path`` / ``data_dir`` names the input:

* FastVideo merge file (``data_merge_path=merge.txt``): lines ``media_folder,json_path``; each JSON is a
  list of ``{"path": "x.mp4", "cap": ["caption", ...], "resolution": ..., "fps": ..., "duration": ...}``.
* CSV / JSONL table (``data_merge_path=table.csv|.jsonl``, or a ``data_dir`` holding exactly one such file
  at its top level): one row per item with a caption column and a video column.
* Mochi-style folder (``data_dir``): ``clip.mp4`` (or an image) with ``clip.txt`` beside it, searched
  recursively.
* CogVideoX-style root (``data_dir`` with ``prompts.txt`` + ``videos.txt``): line i of each pairs up.

Problems with a single entry (caption missing, empty or not UTF-8, media not found, unknown extension)
come back as :class:`Skipped` records so one bad file never stops a run; problems that make the whole
input unusable raise :class:`SourceError`. Media files are only checked for existence here; decoding
(and catching zero-byte or truncated files) is the decoder's job.

Try it on a folder to see what would be preprocessed::

    python -m fastvideo.data_preprocess.sources --data_dir data/synthetic/mochi
    python -m fastvideo.data_preprocess.sources --data_merge_path data/synthetic/merge/merge.txt
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastvideo.media.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MEDIA_EXTENSIONS = frozenset(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
TABLE_EXTENSIONS = frozenset({".csv", ".jsonl"})
COGVIDEOX_FILES = ("prompts.txt", "videos.txt")

# Characters allowed in an item name; anything else becomes "_" so the name is a safe file stem.
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")


class SourceError(ValueError):
    """The input configuration as a whole is unusable (as opposed to one bad entry, see Skipped)."""


@dataclass(frozen=True)
class Item:
    """One (media file, caption) pair ready for preprocessing."""

    name: str  # unique, filesystem-safe id, used as the output file stem
    media_path: Path  # absolute path
    caption: str  # stripped, non-empty, on one line
    kind: str  # "video" or "image"
    origin: str  # where it came from, e.g. "videos.json item 3", for messages


@dataclass(frozen=True)
class Skipped:
    """An entry that was left out, and why (one line)."""

    what: str
    reason: str


@dataclass(frozen=True)
class _Candidate:
    """An item before its final unique name is chosen."""

    media_path: Path
    caption: str
    kind: str
    origin: str


# ----------------------------------------------------------------------------- captions and paths


def clean_caption(text: str) -> str:
    """Strip a caption and put it on one line (captions feed a text encoder, not a file format)."""
    return _NEWLINES.sub(" ", text.strip())


def media_kind(path: str | os.PathLike) -> str | None:
    """ "video" / "image" by file extension, None when the extension is not a known media type."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def _read_text_file(path: Path) -> str:
    """Read a whole text file as UTF-8; a BOM (common from Windows editors) is dropped."""
    return path.read_bytes().decode("utf-8-sig")


def _read_config_text(path: Path) -> str:
    """Read a list/config file; unlike per-item captions, an unreadable one stops the run."""
    try:
        return _read_text_file(path)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None


def _absolute(base: Path, written: str) -> Path:
    """Resolve a path from a list file: absolute as-is, relative to ``base`` otherwise.

    Symlinks are deliberately not resolved so the item name stays the stem the user sees.
    """
    return Path(os.path.abspath(base / Path(written).expanduser()))


def _first_caption(value: Any) -> str | None:
    """The first non-empty caption from a string or a list of strings; None when there is none."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str) and clean_caption(v):
            return clean_caption(v)
    return None


def _caption_problem(value: Any) -> str:
    """Explain why ``_first_caption`` found nothing usable in ``value``."""
    if value is None:
        return "caption is missing"
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, str) for v in values):
        return "caption is empty"
    return f"caption is not text (got {type(value).__name__})"


def _check_media(media_path: Path) -> str | None:
    """Reason the media entry is unusable, or None; only existence is checked, never the content."""
    if media_kind(media_path) is None:
        suffix = media_path.suffix or "(none)"
        known = " ".join(sorted(MEDIA_EXTENSIONS))
        return f"unknown media extension {suffix} (known: {known})"
    if not media_path.exists():
        return "media file not found"
    if not media_path.is_file():
        return "media path is not a file"
    return None


def _list_entry(base: Path, written: Any, caption_value: Any, origin: str) -> _Candidate | Skipped:
    """Turn one entry of a list format (merge JSON, table row, CogVideoX line) into a candidate."""
    if not isinstance(written, str) or not written.strip():
        return Skipped(origin, "media path is empty or missing")
    written = written.strip()
    media_path = _absolute(base, written)
    problem = _check_media(media_path)
    if problem:
        return Skipped(written, problem)
    caption = _first_caption(caption_value)
    if caption is None:
        return Skipped(written, _caption_problem(caption_value))
    return _Candidate(media_path, caption, media_kind(media_path) or "", origin)


# ----------------------------------------------------------------------------- formats


def _merge_lines(merge_path: Path) -> Iterator[tuple[int, str, str]]:
    """Yield (line number, media folder, json path) from a FastVideo merge file."""
    for number, raw in enumerate(_read_config_text(merge_path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise SourceError(f"{merge_path} line {number}: expected 'media_folder,json_path', got {line!r}")
        yield number, parts[0], parts[1]


def _load_json_list(json_path: Path, where: str) -> list[Any]:
    if not json_path.is_file():
        raise SourceError(f"{where}: JSON file not found: {json_path}")
    try:
        data = json.loads(_read_config_text(json_path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise SourceError(f"{json_path} must hold a JSON list of items, got {type(data).__name__}")
    return data


def _collect_merge(merge_path: Path) -> Iterator[_Candidate | Skipped]:
    """FastVideo merge file: every listed JSON, in file order."""
    for number, folder, json_name in _merge_lines(merge_path):
        media_folder = _absolute(merge_path.parent, folder)
        json_path = _absolute(merge_path.parent, json_name)
        if not media_folder.is_dir():
            raise SourceError(f"{merge_path} line {number}: media folder not found: {media_folder}")
        for index, entry in enumerate(_load_json_list(json_path, f"{merge_path} line {number}"), 1):
            origin = f"{json_path.name} item {index}"
            if not isinstance(entry, dict):
                yield Skipped(origin, f"item is not a JSON object (got {type(entry).__name__})")
                continue
            yield _list_entry(media_folder, entry.get("path"), entry.get("cap"), origin)


def _table_rows_csv(table: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Columns and (line number, row) pairs of a CSV file with a header row."""
    # newline="" keeps quoted multi-line captions intact, as the csv module requires.
    reader = csv.DictReader(io.StringIO(_read_config_text(table), newline=""))
    columns = [c for c in (reader.fieldnames or []) if c is not None]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for row in reader:
            # line_num is the physical line where the row ends: what an editor shows.
            yield reader.line_num, row

    return columns, rows()


def _table_rows_jsonl(table: Path) -> tuple[list[str], list[tuple[int, dict[str, Any] | str]]]:
    """Columns (keys seen in any row) and (line number, row or error text) pairs of a JSONL file."""
    rows: list[tuple[int, dict[str, Any] | str]] = []
    columns: dict[str, None] = {}  # ordered set
    for number, raw in enumerate(_read_config_text(table).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            rows.append((number, f"line is not valid JSON ({e.msg})"))
            continue
        if not isinstance(row, dict):
            rows.append((number, f"line is not a JSON object (got {type(row).__name__})"))
            continue
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


def _require_columns(table: Path, columns: list[str], caption_column: str, video_column: str) -> None:
    missing = [c for c in (caption_column, video_column) if c not in columns]
    if missing:
        found = ", ".join(repr(c) for c in columns) if columns else "none"
        raise SourceError(
            f"{table} has no column {' or '.join(repr(c) for c in missing)}; columns found: {found}. "
            f"Set --caption_column / --video_column (caption_column= / video_column=) to the right names."
        )


def _collect_table(table: Path, caption_column: str, video_column: str) -> Iterator[_Candidate | Skipped]:
    """CSV or JSONL table; paths relative to the table's folder."""
    if table.suffix.lower() == ".csv":
        columns, rows = _table_rows_csv(table)
    else:
        columns, rows = _table_rows_jsonl(table)
    _require_columns(table, columns, caption_column, video_column)
    for number, row in rows:
        origin = f"{table.name} line {number}"
        if isinstance(row, str):
            yield Skipped(origin, row)
            continue
        yield _list_entry(table.parent, row.get(video_column), row.get(caption_column), origin)


def _content_lines(path: Path) -> list[str]:
    """Lines of a list file, without the trailing blank lines a final newline or editor leaves."""
    lines = _read_config_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _collect_cogvideox(root: Path) -> Iterator[_Candidate | Skipped]:
    """CogVideoX root: line i of prompts.txt captions line i of videos.txt."""
    prompts = _content_lines(root / "prompts.txt")
    videos = _content_lines(root / "videos.txt")
    if len(prompts) != len(videos):
        raise SourceError(
            f"{root}: prompts.txt has {len(prompts)} lines but videos.txt has {len(videos)}; "
            "line i of each must describe the same clip"
        )
    for number, (prompt, video) in enumerate(zip(prompts, videos, strict=True), start=1):
        yield _list_entry(root, video, prompt, f"prompts.txt line {number}")


def _is_hidden(relative: Path) -> bool:
    """Hidden files/folders (.git, macOS ._clip.mp4 forks, .ipynb_checkpoints) are never data."""
    return any(part.startswith(".") for part in relative.parts)


def _mochi_media(folder: Path) -> list[Path]:
    """Media files under ``folder``, recursively, in sorted (deterministic) order."""
    found = [
        p
        for p in folder.rglob("*")
        if media_kind(p) is not None and not _is_hidden(p.relative_to(folder)) and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _mochi_entry(folder: Path, media: Path) -> _Candidate | Skipped:
    """One Mochi media file and the same-stem .txt caption beside it."""
    relative = media.relative_to(folder).as_posix()
    shown = str(folder / relative)  # the path as the user's data_dir spells it
    caption_path = media.with_suffix(".txt")
    if not caption_path.is_file():
        return Skipped(shown, f"caption file missing (expected {caption_path.name})")
    try:
        caption = clean_caption(_read_text_file(caption_path))
    except UnicodeDecodeError:
        return Skipped(shown, f"caption is not UTF-8 text ({caption_path.name})")
    except OSError as e:
        return Skipped(shown, f"caption file unreadable ({caption_path.name}: {e.strerror or e})")
    if not caption:
        return Skipped(shown, f"caption is empty ({caption_path.name})")
    media_path = Path(os.path.abspath(media))
    return _Candidate(media_path, caption, media_kind(media) or "", relative)


def _collect_mochi(folder: Path) -> Iterator[_Candidate | Skipped]:
    for media in _mochi_media(folder):
        yield _mochi_entry(folder, media)


# ----------------------------------------------------------------------------- names


def _safe_stem(path: Path) -> str:
    stem = _UNSAFE_NAME_CHARS.sub("_", path.stem).strip("._")
    return stem or "item"


def _path_hash(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]


def assign_names(candidates: Iterable[_Candidate]) -> list[Item]:
    """Give each candidate a unique, filesystem-safe name: its stem, disambiguated when shared.

    Stems are compared case-insensitively because outputs may land on a case-insensitive file
    system. A shared stem gets ``-<8 hex of sha1(resolved path)>``; the same file listed twice
    additionally gets ``-2``, ``-3``, ... in list order, so names never depend on anything random.
    """
    candidates = list(candidates)
    stems = [_safe_stem(c.media_path) for c in candidates]
    stem_counts = Counter(s.lower() for s in stems)
    taken: set[str] = set()
    items = []
    for candidate, stem in zip(candidates, stems, strict=True):
        name = stem if stem_counts[stem.lower()] == 1 else f"{stem}-{_path_hash(candidate.media_path)}"
        unique, copy = name, 1
        while unique.lower() in taken:
            copy += 1
            unique = f"{name}-{copy}"
        taken.add(unique.lower())
        items.append(Item(unique, candidate.media_path, candidate.caption, candidate.kind, candidate.origin))
    return items


# ----------------------------------------------------------------------------- entry points


def detect_format(data_dir: str | os.PathLike) -> str:
    """ "cogvideox" (prompts.txt + videos.txt), "table" (one top-level .csv/.jsonl) or "mochi"."""
    root = _existing_dir(data_dir)
    if all((root / name).is_file() for name in COGVIDEOX_FILES):
        return "cogvideox"
    if len(_top_level_tables(root)) == 1:
        return "table"
    return "mochi"


def _existing_dir(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if root.is_file():
        raise SourceError(f"data_dir {str(data_dir)!r} is a file; pass list files as --data_merge_path")
    if not root.is_dir():
        raise SourceError(f"data_dir {str(data_dir)!r} is not an existing folder")
    return root


def _top_level_tables(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix.lower() in TABLE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _from_merge_path(
    data_merge_path: str, caption_column: str, video_column: str
) -> Iterator[_Candidate | Skipped]:
    path = Path(data_merge_path).expanduser()
    if not path.is_file():
        raise SourceError(f"data_merge_path {data_merge_path!r} is not an existing file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _collect_merge(path)
    if suffix in TABLE_EXTENSIONS:
        return _collect_table(path, caption_column, video_column)
    raise SourceError(
        f"unknown data_merge_path format {suffix or '(no extension)'!r} for {data_merge_path!r}: "
        "expected a FastVideo merge file (.txt) or a table (.csv / .jsonl)"
    )


def _from_data_dir(data_dir: str, caption_column: str, video_column: str) -> Iterator[_Candidate | Skipped]:
    root = _existing_dir(data_dir)
    fmt = detect_format(root)
    if fmt == "cogvideox":
        return _collect_cogvideox(root)
    if fmt == "table":
        return _collect_table(_top_level_tables(root)[0], caption_column, video_column)
    return _collect_mochi(root)


def collect_items(
    *,
    data_merge_path: str | None = None,
    data_dir: str | None = None,
    caption_column: str = "caption",
    video_column: str = "video",
) -> tuple[list[Item], list[Skipped]]:
    """Read the input named by exactly one of ``data_merge_path`` / ``data_dir``.

    Returns the usable items (uniquely named, in deterministic order) and the skipped entries.
    Raises SourceError when the configuration itself is unusable.
    """
    if (data_merge_path is None) == (data_dir is None):
        given = "both were given" if data_merge_path is not None else "neither was given"
        raise SourceError(f"give exactly one of --data_merge_path or --data_dir ({given})")
    if data_merge_path is not None:
        entries = _from_merge_path(str(data_merge_path), caption_column, video_column)
    else:
        entries = _from_data_dir(str(data_dir), caption_column, video_column)
    candidates: list[_Candidate] = []
    skipped: list[Skipped] = []
    for entry in entries:
        (skipped if isinstance(entry, Skipped) else candidates).append(entry)
    return assign_names(candidates), skipped


def main(argv: list[str] | None = None) -> int:
    """List what a data source would yield, without touching the media."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_merge_path", default=None)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--video_column", default="video")
    args = parser.parse_args(argv)
    try:
        items, skipped = collect_items(
            data_merge_path=args.data_merge_path,
            data_dir=args.data_dir,
            caption_column=args.caption_column,
            video_column=args.video_column,
        )
    except SourceError as e:
        parser.error(str(e))
    for item in items:
        print(f"{item.name}\t{item.kind}\t{item.media_path}\t{item.caption}")
    for skip in skipped:
        print(f"SKIPPED {skip.what}: {skip.reason}")
    print(f"{len(items)} items, {len(skipped)} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
