r"""Fine-tune a video DiT (full weights) with FSDP2 + Ulysses sequence parallelism.

    torchrun --standalone --nproc_per_node 2 -m fastvideo.train --sp_size 2 \
        --model_path data/tiny-mochi --data_json_path data/processed --output_dir outputs/finetune

or ``bash scripts/finetune_mochi.sh`` (the same, configured by environment variables); on a laptop
``python -m fastvideo.train`` runs one process on the embedded tiny model. Writes sharded
checkpoints, ``metrics.jsonl``, ``loss_curve.png``, validation videos and a diffusers-format
``transformer/`` to ``--output_dir``. ``--resume_from_checkpoint latest`` continues exactly.
"""

from __future__ import annotations

import sys

from fastvideo.cli import launch
from fastvideo.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    from fastvideo.training.trainer import Trainer

    return launch(TrainConfig, Trainer, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
