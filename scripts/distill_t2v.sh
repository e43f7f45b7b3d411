#!/usr/bin/env bash
# Phased consistency distillation to few sampling steps, through torchrun (`python -m fastvideo.launch`,
# torchrun plus a preflight check; see scripts/launch.sh): `python -m fastvideo.distill`.
# Settings are environment variables with defaults; extra arguments pass through (see --help),
# e.g. --use_ema --use_lora --not_apply_cfg_solver.
#
#   bash scripts/distill_t2v.sh                    # distill the quickstart's fine-tuned tiny model (outputs/finetune-mochi)
#   MODEL_TYPE=wan bash scripts/distill_t2v.sh    # Wan (outputs/finetune-wan)
#   MODEL_PATH=data/mochi NUM_GPUS=8 SP_SIZE=4 MAX_TRAIN_STEPS=4000 LEARNING_RATE=1e-6 bash scripts/distill_t2v.sh --use_ema
# The output folder is a whole diffusers pipeline with the PCM scheduler (see fastvideo/distill/distiller.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh
MODEL_PATH=${MODEL_PATH:-outputs/finetune-$MODEL_TYPE}
DATA_JSON_PATH=${DATA_JSON_PATH:-$PROCESSED_DEFAULT}  # the folder holding videos2caption.json, or that file
OUTPUT_DIR=${OUTPUT_DIR:-outputs/distill-$MODEL_TYPE}
SP_SIZE=${SP_SIZE:-1}
MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-20}
LEARNING_RATE=${LEARNING_RATE:-1e-5}
NUM_EULER_TIMESTEPS=${NUM_EULER_TIMESTEPS:-50}
MULTI_PHASED_DISTILL_SCHEDULE=${MULTI_PHASED_DISTILL_SCHEDULE:-4000-1}
DISTILL_CFG=${DISTILL_CFG:-3.0}
CHECKPOINTING_STEPS=${CHECKPOINTING_STEPS:-10}
VALIDATION_STEPS=${VALIDATION_STEPS:-10}

if [[ ! -f "$MODEL_PATH/model_index.json" || ! -d "$MODEL_PATH/transformer" ]]; then
  echo "error: MODEL_PATH=$MODEL_PATH is not a pipeline folder with a transformer/." >&2
  echo "  Fine-tune first (bash scripts/finetune_mochi.sh, or the quickstart), or set MODEL_PATH=$TINY_MODEL." >&2
  exit 2
fi
source scripts/launch.sh

CMD=("${LAUNCH[@]}" -m fastvideo.distill --model_type "$MODEL_TYPE"
  --model_path "$MODEL_PATH" --data_json_path "$DATA_JSON_PATH" --output_dir "$OUTPUT_DIR" --sp_size "$SP_SIZE"
  --max_train_steps "$MAX_TRAIN_STEPS" --learning_rate "$LEARNING_RATE" --num_euler_timesteps "$NUM_EULER_TIMESTEPS"
  --multi_phased_distill_schedule "$MULTI_PHASED_DISTILL_SCHEDULE" --distill_cfg "$DISTILL_CFG"
  --checkpointing_steps "$CHECKPOINTING_STEPS" --validation_steps "$VALIDATION_STEPS" "$@")
echo "+ ${CMD[*]}"
exec "${CMD[@]}"
