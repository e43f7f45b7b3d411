"""Command-line parsing for the typed config dataclasses: one flag per field, in one place.

Each field becomes ``--name`` with the field's default; bool fields become ``--name`` (default
False) or ``--no_name`` (default True). The help text is the docstring that follows the field in
the class body (read from the source), so the dataclass stays the single description of a config.
``launch`` is the shared ``main`` of the torchrun entry points: parse, run under torch.distributed,
and turn user errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
from typing import TypeVar

T = TypeVar("T")
_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields (``x: int = 1`` followed by a string), base classes too."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def build_parser(
    cls, description: str | None = None, required: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = docs.get(f.name, "")
        if str(f.type) == "bool":
            if default:
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=help_text)
            else:
                parser.add_argument(f"--{f.name}", action="store_true", help=help_text)
            continue
        kind = _TYPES.get(str(f.type), str)
        parser.add_argument(
            f"--{f.name}", type=kind, default=default, required=f.name in required,
            help=f"{help_text} (default: {default})",
        )  # fmt: skip
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, *, description=None, required=()) -> T:
    return cls(**vars(build_parser(cls, description, required).parse_args(argv)))


class RunError(RuntimeError):
    """A run that must stop (non-finite loss, ...); the message is for the user (exit code 1)."""


def launch(config_cls: type[T], runner_cls, argv: list[str] | None, description: str | None) -> int:
    """Parse ``config_cls`` and run ``runner_cls(cfg, dist_info).run()`` under torch.distributed.

    Bad settings or inputs (ValueError, FileNotFoundError) exit 2, a ``RunError`` exits 1, each with
    one ``error:`` line from rank 0 instead of a traceback.
    """
    from fastvideo.parallel.process_group import distributed

    try:
        cfg = parse_config(config_cls, argv, description=description)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with distributed() as dist_info:
        try:
            runner_cls(cfg, dist_info).run()
        except (ValueError, FileNotFoundError, RunError) as err:
            if dist_info.is_main:
                print(f"error: {err}", file=sys.stderr)
            return 1 if isinstance(err, RunError) else 2
    return 0
