"""Command-line parsing for the typed config dataclasses: one flag per field, in one place.

Each field becomes ``--name`` with the field's default; bool fields become ``--name`` (default
False) or ``--no_name`` (default True). The help text is the docstring that follows the field in
the class body (read from the source), so the dataclass stays the single description of a config.
A config class may list inherited fields it does not use in ``REFUSED_FLAGS`` ({name: why}): such
a flag is refused with that reason instead of being silently ignored. A bad flag or value is one
``error:`` line (ValueError), never argparse's usage block.

``launch`` is the shared ``main`` of the torchrun entry points: parse, run under torch.distributed,
and turn errors into one line and an exit code (2: bad settings or inputs, 1: the run failed, 3:
another rank failed first and this one lost contact with it). Every
rank prints its own error, naming its rank; a failed rank of a multi-process job exits at once
(``os._exit``), without tearing down a process group its peers may be blocked in, so torchrun's
agent ends the whole job within a second instead of at the collective timeout.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from fastvideo.parallel.process_group import DistInfo

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


class UsageError(ValueError):
    """A bad command line; the message says which flag and what is wrong."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value raises UsageError (one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def refuse_flag(why: str) -> type[argparse.Action]:
    class Refuse(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            raise UsageError(f"{option_string} is not used here: {why}")

    return Refuse


def build_parser(
    cls, description: str | None = None, required: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(cls)
    refused = getattr(cls, "REFUSED_FLAGS", {})
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in refused:
            parser.add_argument(
                f"--{f.name}", dest=f"_refused_{f.name}", nargs="?", action=refuse_flag(refused[f.name]),
                help=f"refused: {refused[f.name]}",
            )  # fmt: skip
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
    args = vars(build_parser(cls, description, required).parse_args(argv))
    return cls(**{k: v for k, v in args.items() if not k.startswith("_refused_")})


class RunError(RuntimeError):
    """A run that must stop (non-finite loss, ...); the message is for the user (exit code 1)."""


USER_ERRORS = (ValueError, FileNotFoundError)
# Exit code of a rank that stopped because another rank failed first (its collective lost the peer).
PEER_LOST = 3


def first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


def lost_a_peer(err: BaseException) -> bool:
    """A collective that failed, i.e. (on a rank that did nothing wrong) a peer that died first.

    torch.distributed's own error types, or any error raised from inside torch.distributed (gloo
    reports a vanished peer as a plain RuntimeError from the collective's wait()).
    """
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"torch{os.sep}distributed{os.sep}" in frames[-1].filename


def report_error(err: BaseException | str, rank: int, world_size: int) -> None:
    where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
    print(f"error{where}: {err}", file=sys.stderr, flush=True)


def launch(
    config_cls: type[T],
    run: Callable[[T, DistInfo], int | None],
    argv: list[str] | None,
    description: str | None,
    required: tuple[str, ...] = (),
) -> int:
    """Parse ``config_cls`` and return ``run(cfg, dist_info)`` (None: 0) under torch.distributed.

    Bad settings or inputs (ValueError, FileNotFoundError) exit 2, a ``RunError`` exits 1, each with
    one ``error:`` line instead of a traceback; any other exception prints its traceback (a bug to
    report) under the rank's ``error`` line and exits 1.
    """
    from fastvideo.parallel.process_group import distributed

    try:
        cfg = parse_config(config_cls, argv, description=description, required=required)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with distributed() as dist_info:
        try:
            return run(cfg, dist_info) or 0
        except (*USER_ERRORS, RunError) as err:
            code = 1 if isinstance(err, RunError) else 2
            report_error(err, dist_info.rank, dist_info.world_size)
        except Exception as err:  # any other failure: every rank reports it, then the job ends
            code = 1
            if lost_a_peer(err):
                code = PEER_LOST  # a consequence, not a cause: the launcher names the rank that failed
                report_error(f"lost contact with another rank ({first_line(err)}); the rank that failed first "
                             "says why", dist_info.rank, dist_info.world_size)  # fmt: skip
            else:
                traceback.print_exc()  # a bug to report: keep the whole story
                report_error(f"{type(err).__name__}: {err}", dist_info.rank, dist_info.world_size)
        if dist_info.world_size > 1:
            sys.stdout.flush()
            os._exit(code)  # peers may sit in a collective: leave now, torchrun's agent stops them
    return code
