r"""Distill a video DiT to few sampling steps: phased consistency distillation (PCM, the default) or DMD2
(``--method dmd2``, ``fastvideo/distill/dmd.py``).

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


def distill(cfg: DistillConfig, dist_info) -> None:
    """Run the distiller of ``--method``: PCM (``distiller.Distiller``) or DMD2 (``dmd.DMDDistiller``)."""
    if cfg.method == "dmd2":
        from fastvideo.distill.dmd import DMDDistiller as method
    else:
        from fastvideo.distill.distiller import Distiller as method
    method(cfg, dist_info).run()


def main(argv: list[str] | None = None) -> int:
    return launch(DistillConfig, distill, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
