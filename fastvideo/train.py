r"""Fine-tune a video DiT (full weights) with FSDP2 + Ulysses sequence parallelism.

    torchrun --standalone --nproc_per_node 2 -m fastvideo.train --sp_size 2 \
        --model_path data/tiny-mochi --data_json_path data/processed --output_dir outputs/finetune

or ``bash scripts/finetune_mochi.sh`` (the same through ``python -m fastvideo.launch``, torchrun
plus a preflight check, configured by environment variables); on a laptop
``python -m fastvideo.train`` runs one process on the embedded tiny model. Writes sharded
checkpoints, ``metrics.jsonl``, ``loss_curve.png``, validation videos and a diffusers-format
``transformer/`` to ``--output_dir``. ``--resume_from_checkpoint latest`` continues exactly.
"""

from __future__ import annotations

import sys

from fastvideo.cli import launch, parse_config
from fastvideo.training.config import TrainConfig


def preflight(argv: list[str], world_size: int, single_node: bool = True) -> None:
    """What ``python -m fastvideo.launch`` checks once before starting the workers (ValueError)."""
    parse_config(TrainConfig, argv).preflight(world_size, check_output_dir=single_node)


def main(argv: list[str] | None = None) -> int:
    from fastvideo.training.trainer import Trainer

    return launch(TrainConfig, lambda cfg, dist_info: Trainer(cfg, dist_info).run(), argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
