r"""Distill a video DiT to few sampling steps with phased consistency distillation (PCM).

    torchrun --standalone --nproc_per_node 2 -m fastvideo.distill --sp_size 2 \
        --model_path data/tiny-mochi --data_json_path data/processed --output_dir outputs/distill

(``fastvideo/distill/__main__.py``; a module ``fastvideo/distill.py`` would clash with this package)
or ``bash scripts/distill_t2v.sh``. Same machinery, flags and outputs as ``fastvideo.train`` (FSDP2,
SP, EMA, checkpoints, exact resume, LoRA), plus the PCM flags (``--num_euler_timesteps``,
``--multi_phased_distill_schedule``, ``--distill_cfg``, ``--huber_c``, ...); see
``fastvideo/distill/distiller.py`` for the algorithm.
"""

from __future__ import annotations

import sys

from fastvideo.cli import launch, parse_config
from fastvideo.distill.config import DistillConfig


def preflight(argv: list[str], world_size: int, single_node: bool = True) -> None:
    """What ``python -m fastvideo.launch`` checks once before starting the workers (ValueError)."""
    parse_config(DistillConfig, argv).preflight(world_size, check_output_dir=single_node)


def main(argv: list[str] | None = None) -> int:
    from fastvideo.distill.distiller import Distiller

    return launch(DistillConfig, lambda cfg, dist_info: Distiller(cfg, dist_info).run(), argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
