r"""torchrun with a check before any worker starts and one clear line when a worker fails.

    python -m fastvideo.launch --standalone --nproc_per_node 2 -m fastvideo.train --sp_size 2 ...

It takes torchrun's arguments unchanged and runs torchrun's own launcher in this process; the
``scripts/*.sh`` recipes launch through it. Two things are added:

* **Preflight.** For fastvideo's entry points it parses the entry point's flags and runs the
  entry point's ``preflight(argv, world_size, single_node)``: every check that needs no process
  group and no weights (flags, paths, parallel degrees against the process count, a checkpoint that
  does not fit, and on one node an output folder held by a live run). A problem is one ``error:``
  line and exit code 2, before any worker starts. (On several nodes the output folder is checked
  by the workers' rank 0 alone: the other nodes' launchers could race it.)
* **Failure summary.** Each worker prints its own ``error (rank r of n): ...`` line
  (``fastvideo.cli.launch``). When one fails, torchrun stops the others; this launcher then names
  the rank that failed on its own (not a peer that only lost contact with it, exit code 3) and
  exits with that rank's exit code, instead of torchrun's ``ChildFailedError`` block.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

# Entry point (torchrun's -m module, or a script path) -> "module:preflight function".
PREFLIGHTS = {
    "fastvideo.train": "fastvideo.train:preflight",
    "fastvideo.distill": "fastvideo.distill.__main__:preflight",
    "fastvideo.data_preprocess.preprocess": "fastvideo.data_preprocess.preprocess:preflight",
    "fastvideo.sample.sampler": "fastvideo.sample.sampler:preflight",
    "fastvideo/sample/sample_t2v.py": "fastvideo.sample.sampler:preflight",
    "fastvideo/sample/sample_t2v_mochi.py": "fastvideo.sample.sampler:preflight",
}


def entry_name(args) -> str:
    if args.module:
        return args.training_script
    script = os.path.abspath(args.training_script)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(script, root) if script.startswith(root + os.sep) else script


def preflight(entry: str, argv: list[str], world_size: int, single_node: bool) -> None:
    """Run ``entry``'s preflight (raises ValueError with the message for the user); unknown entries pass."""
    spec = PREFLIGHTS.get(entry)
    if spec is None:
        return
    module_name, function = spec.split(":")
    getattr(importlib.import_module(module_name), function)(argv, world_size, single_node)


def layout_of(args) -> tuple[int, int]:
    """(processes per node, nodes) from torchrun's --nproc_per_node and --nnodes."""
    from torch.distributed.run import determine_local_world_size, parse_min_max_nnodes

    try:
        per_node = determine_local_world_size(args.nproc_per_node)
    except ValueError:
        raise ValueError(
            f"--nproc_per_node (NUM_GPUS) must be a positive whole number, got {args.nproc_per_node!r}"
        ) from None
    try:
        _, max_nodes = parse_min_max_nnodes(args.nnodes)
    except (ValueError, RuntimeError):
        raise ValueError(f"--nnodes (NNODES) must be a positive whole number, got {args.nnodes!r}") from None
    if per_node < 1 or max_nodes < 1:
        raise ValueError(f"need at least one process and one node (got {per_node} x {max_nodes})")
    return per_node, max_nodes


def root_cause(failures: dict) -> tuple[int, object]:
    """The failure to report: the earliest of the ranks that failed on their own.

    Ranks that exited with PEER_LOST, or were stopped by a signal, only reacted to another failure;
    the agent may record them in the same instant as the rank that caused it.
    """
    from fastvideo.cli import PEER_LOST

    causes = {r: f for r, f in failures.items() if f.exitcode > 0 and f.exitcode != PEER_LOST} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    return rank, causes[rank]


def run_torchrun(args) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    # The summary below replaces the agent's own failure report.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = root_cause(err.failures)
        code = failure.exitcode
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        print(
            f"error: rank {rank} failed first ({how}); the ranks' own error lines are above",
            file=sys.stderr,
        )
        return code if code > 0 else 1
    except SignalException as err:
        print(
            f"error: the launcher got {signal.Signals(err.sigval).name}; the workers were stopped",
            file=sys.stderr,
        )
        return 128 + int(err.sigval)
    return 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import parse_args

    args = parse_args(argv)
    try:
        per_node, nodes = layout_of(args)
        preflight(entry_name(args), list(args.training_script_args), per_node * nodes, nodes == 1)
    except (ValueError, OSError) as err:  # bad flags or values; missing or unreadable files
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_torchrun(args)


if __name__ == "__main__":
    sys.exit(main())
