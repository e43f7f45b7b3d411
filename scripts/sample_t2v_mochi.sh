#!/usr/bin/env bash
# Sample text-to-video (Mochi, or MODEL_TYPE=wan) through torchrun (sequence parallel over NUM_GPUS ranks);
# an image-to-video folder (Wan 2.1 I2V) takes the first frame from IMAGE=path/to/image.png.
# Settings are environment variables with defaults; extra arguments pass through
# (see `python fastvideo/sample/sample_t2v.py --help`), e.g. --negative_prompt "blurry" --seeds 0,1.
#
#   bash scripts/sample_t2v_mochi.sh                 # the quickstart's distilled tiny model, 8 PCM steps
#   MODEL_PATH=data/mochi NUM_GPUS=8 NUM_FRAMES=163 HEIGHT=480 WIDTH=848 NUM_INFERENCE_STEPS=64 \
#     SCHEDULER_TYPE=euler GUIDANCE_SCALE=4.5 PROMPT_PATH=assets/prompt.txt bash scripts/sample_t2v_mochi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh
MODEL_PATH=${MODEL_PATH:-outputs/distill-$MODEL_TYPE}
PROMPT_PATH=${PROMPT_PATH:-assets/prompt.txt}
OUTPUT_PATH=${OUTPUT_PATH:-outputs/samples}
NUM_FRAMES=${NUM_FRAMES:-25}
HEIGHT=${HEIGHT:-64}
WIDTH=${WIDTH:-96}
NUM_INFERENCE_STEPS=${NUM_INFERENCE_STEPS:-8}
SCHEDULER_TYPE=${SCHEDULER_TYPE:-auto}
SEED=${SEED:-0}

if [[ ! -f "$MODEL_PATH/model_index.json" ]]; then
  echo "error: MODEL_PATH=$MODEL_PATH is not a pipeline folder (no model_index.json)." >&2
  echo "  Run bash scripts/quickstart.sh (it leaves outputs/distill-$MODEL_TYPE), or set MODEL_PATH=$TINY_MODEL." >&2
  exit 2
fi
source scripts/launch.sh
CMD=("${LAUNCH[@]}" fastvideo/sample/sample_t2v.py --model_type "$MODEL_TYPE"
  --model_path "$MODEL_PATH" --prompt_path "$PROMPT_PATH" --output_path "$OUTPUT_PATH" --num_frames "$NUM_FRAMES"
  --height "$HEIGHT" --width "$WIDTH" --num_inference_steps "$NUM_INFERENCE_STEPS" --scheduler_type "$SCHEDULER_TYPE"
  --seed "$SEED" ${GUIDANCE_SCALE:+--guidance_scale "$GUIDANCE_SCALE"} ${IMAGE:+--image "$IMAGE"} "$@")
echo "+ ${CMD[*]}"
exec "${CMD[@]}"
