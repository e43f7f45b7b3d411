r"""Sample text-to-video for any family with sequence parallelism over all ranks; one mp4 per prompt and seed.

    torchrun --nproc_per_node 2 fastvideo/sample/sample_t2v.py --model_type wan --model_path data/tiny-wan \
        --prompts "a red circle moving right|a blue square moving up" --output_path outputs/samples
    python fastvideo/sample/sample_t2v.py --model_type mochi --prompt_path prompts.txt   # one process

Flags: ``--help``. Steps, guidance, negative prompt and fps default to the family's; the work is
done by ``fastvideo.sample.sampler`` (model-agnostic through the adapters).
``sample_t2v_mochi.py`` is this with ``--model_type mochi``.
"""

from __future__ import annotations

import sys

from fastvideo.sample.sampler import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
