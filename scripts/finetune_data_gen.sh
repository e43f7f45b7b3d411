#!/usr/bin/env bash
# Preprocess videos + captions into latents and text embeddings (FastVideo layout) with torchrun
# (`$PYTHON -m fastvideo.launch`: the torchrun of the same Python, plus a preflight check).
# Every setting is an environment variable with a default; extra arguments pass through to
# `python -m fastvideo.data_preprocess.preprocess` (see its --help), e.g. --verify 2 --crop random.
#
#   bash scripts/finetune_data_gen.sh                                   # tiny model, synthetic clips, CPU
#   MODEL_TYPE=wan bash scripts/finetune_data_gen.sh                    # the same for Wan (data/processed-wan)
#   MODEL_PATH=data/mochi DATA_DIR=/videos NUM_FRAMES=37 HEIGHT=480 WIDTH=848 NUM_GPUS=8 \
#     bash scripts/finetune_data_gen.sh
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on every node.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh
MODEL_PATH=${MODEL_PATH:-$TINY_MODEL}
DATA_MERGE_PATH=${DATA_MERGE_PATH:-}
DATA_DIR=${DATA_DIR:-}
OUTPUT_DIR=${OUTPUT_DIR:-$PROCESSED_DEFAULT}
NUM_FRAMES=${NUM_FRAMES:-25}
HEIGHT=${HEIGHT:-64}
WIDTH=${WIDTH:-96}
TRAIN_FPS=${TRAIN_FPS:-30}
VALIDATION_PROMPT_TXT=${VALIDATION_PROMPT_TXT:-assets/prompt.txt}
ID_TOKEN=${ID_TOKEN:-}

# The embedded defaults build themselves on first use, so this runs on a fresh machine.
ensure_tiny_model "$MODEL_PATH"
if [[ -z "$DATA_MERGE_PATH" && -z "$DATA_DIR" ]]; then
  DATA_DIR=data/synthetic/mochi
  [[ -d "$DATA_DIR" ]] || "$PYTHON" -m fastvideo.data_preprocess.synthetic --output data/synthetic
fi

SOURCE=(--data_dir "$DATA_DIR")
[[ -n "$DATA_MERGE_PATH" ]] && SOURCE=(--data_merge_path "$DATA_MERGE_PATH")
source scripts/launch.sh
CMD=("${LAUNCH[@]}" -m fastvideo.data_preprocess.preprocess
  --model_type "$MODEL_TYPE" --model_path "$MODEL_PATH" "${SOURCE[@]}" --output_dir "$OUTPUT_DIR"
  --num_frames "$NUM_FRAMES" --height "$HEIGHT" --width "$WIDTH" --train_fps "$TRAIN_FPS"
  --validation_prompt_txt "$VALIDATION_PROMPT_TXT" --id_token "$ID_TOKEN" "$@")
echo "+ ${CMD[*]}"
exec "${CMD[@]}"
