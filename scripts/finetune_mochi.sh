#!/usr/bin/env bash
# Fine-tune (full weights; Mochi by default, MODEL_TYPE=wan for Wan) with FSDP2 + Ulysses sequence parallelism through torchrun
# (`python -m fastvideo.launch`: torchrun plus a preflight check; see scripts/launch.sh).
# Settings are environment variables with defaults; extra arguments pass through to
# `python -m fastvideo.train` (see --help), e.g. --use_ema --activation_checkpointing 0.5.
#
#   bash scripts/finetune_mochi.sh                                        # tiny model, quickstart latents, CPU
#   MODEL_TYPE=wan bash scripts/finetune_mochi.sh                         # tiny Wan, outputs/finetune-wan
#   MODEL_PATH=data/mochi DATA_JSON_PATH=data/processed NUM_GPUS=8 SP_SIZE=4 MAX_TRAIN_STEPS=2000 \
#     LEARNING_RATE=1e-5 bash scripts/finetune_mochi.sh --activation_checkpointing auto --ac_budget_gb 40
# Two noise-level experts (Wan 2.2 A14B: transformer/ and transformer_2/): EXPERT=high or low trains one;
# EXPERT=both trains high into $OUTPUT_DIR-high, then low from that folder into $OUTPUT_DIR (both experts trained).
#   MODEL_TYPE=wan MODEL_PATH=data/tiny-wan-a14b EXPERT=both bash scripts/finetune_mochi.sh
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node (scripts/slurm_finetune_mochi.sbatch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh
MODEL_PATH=${MODEL_PATH:-$TINY_MODEL}
DATA_JSON_PATH=${DATA_JSON_PATH:-$PROCESSED_DEFAULT}  # the folder holding videos2caption.json, or that file
OUTPUT_DIR=${OUTPUT_DIR:-outputs/finetune-$MODEL_TYPE}
SP_SIZE=${SP_SIZE:-1}
MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-20}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-1}
CHECKPOINTING_STEPS=${CHECKPOINTING_STEPS:-10}
VALIDATION_STEPS=${VALIDATION_STEPS:-10}
EXPERT=${EXPERT:-}

if [[ "$EXPERT" == both ]]; then
  EXPERT=high OUTPUT_DIR="$OUTPUT_DIR-high" bash scripts/finetune_mochi.sh "$@"
  EXPERT=low MODEL_PATH="$OUTPUT_DIR-high" OUTPUT_DIR="$OUTPUT_DIR" exec bash scripts/finetune_mochi.sh "$@"
fi

ensure_tiny_model "$MODEL_PATH"
if [[ ! -f "$DATA_JSON_PATH/videos2caption.json" && "$DATA_JSON_PATH" == "$PROCESSED_DEFAULT" ]]; then
  OUTPUT_DIR="$DATA_JSON_PATH" bash scripts/finetune_data_gen.sh
fi
source scripts/launch.sh
CMD=("${LAUNCH[@]}" -m fastvideo.train --model_type "$MODEL_TYPE" --model_path "$MODEL_PATH"
  --data_json_path "$DATA_JSON_PATH" --output_dir "$OUTPUT_DIR" --sp_size "$SP_SIZE"
  --max_train_steps "$MAX_TRAIN_STEPS" --learning_rate "$LEARNING_RATE" --train_batch_size "$TRAIN_BATCH_SIZE"
  --checkpointing_steps "$CHECKPOINTING_STEPS" --validation_steps "$VALIDATION_STEPS" ${EXPERT:+--expert "$EXPERT"} "$@")
echo "+ ${CMD[*]}"
exec "${CMD[@]}"
