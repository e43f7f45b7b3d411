r"""Sample Mochi text-to-video with sequence parallelism over all ranks; one mp4 per prompt and seed.

    torchrun --nproc_per_node 2 fastvideo/sample/sample_t2v_mochi.py --model_path outputs/distill-mochi \
        --prompts "a red circle moving right|a blue square moving up" --num_inference_steps 8 \
        --output_path outputs/samples
    python fastvideo/sample/sample_t2v_mochi.py --prompt_path prompts.txt      # one process (CPU or 1 GPU)

Flags: ``--help``; the work is done by ``fastvideo.sample.sampler`` (model-agnostic through the adapters).
"""

from __future__ import annotations

import sys

from fastvideo.sample.sampler import main

if __name__ == "__main__":
    sys.exit(main(["--model_type", "mochi", *sys.argv[1:]]))
