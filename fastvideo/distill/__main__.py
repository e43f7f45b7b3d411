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

from fastvideo.cli import launch


def main(argv: list[str] | None = None) -> int:
    from fastvideo.distill.distiller import DistillConfig, Distiller

    return launch(DistillConfig, Distiller, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
