#!/usr/bin/env bash
# DMD2 distillation to a few sampling steps (fastvideo/distill/dmd.py: a generator, the frozen teacher as the
# real score, a trainable critic as the fake score), through torchrun (`python -m fastvideo.launch`):
# `python -m fastvideo.distill --method dmd2`. Settings are environment variables with defaults; extra
# arguments pass through (see --help), e.g. --use_ema --critic_learning_rate 2e-6.
#
#   bash scripts/distill_dmd_t2v.sh                      # the quickstart's fine-tuned tiny model (outputs/finetune-mochi)
#   MODEL_TYPE=wan bash scripts/distill_dmd_t2v.sh       # Wan (outputs/finetune-wan)
#   MODEL_PATH=data/wan NUM_GPUS=8 SP_SIZE=2 MAX_TRAIN_STEPS=4000 LEARNING_RATE=1e-6 bash scripts/distill_dmd_t2v.sh --use_ema
# The output folder is a whole diffusers pipeline whose scheduler (FewStepFlowScheduler) samples the generator
# at DMD_NOISE_LEVELS: pipe(prompt, num_inference_steps=3, guidance_scale=1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh
MODEL_PATH=${MODEL_PATH:-outputs/finetune-$MODEL_TYPE}
DATA_JSON_PATH=${DATA_JSON_PATH:-$PROCESSED_DEFAULT}  # the folder holding videos2caption.json, or that file
OUTPUT_DIR=${OUTPUT_DIR:-outputs/distill-dmd-$MODEL_TYPE}
SP_SIZE=${SP_SIZE:-1}
MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-20}
LEARNING_RATE=${LEARNING_RATE:-1e-5}
DMD_NOISE_LEVELS=${DMD_NOISE_LEVELS:-1.0,0.757,0.522}
GENERATOR_UPDATE_INTERVAL=${GENERATOR_UPDATE_INTERVAL:-5}
DISTILL_CFG=${DISTILL_CFG:-3.0}
CHECKPOINTING_STEPS=${CHECKPOINTING_STEPS:-10}
VALIDATION_STEPS=${VALIDATION_STEPS:-10}

if [[ ! -f "$MODEL_PATH/model_index.json" || ! -d "$MODEL_PATH/transformer" ]]; then
  echo "error: MODEL_PATH=$MODEL_PATH is not a pipeline folder with a transformer/." >&2
  echo "  Fine-tune first (bash scripts/finetune_mochi.sh, or the quickstart), or set MODEL_PATH=$TINY_MODEL." >&2
  exit 2
fi
source scripts/launch.sh

CMD=("${LAUNCH[@]}" -m fastvideo.distill --method dmd2 --model_type "$MODEL_TYPE"
  --model_path "$MODEL_PATH" --data_json_path "$DATA_JSON_PATH" --output_dir "$OUTPUT_DIR" --sp_size "$SP_SIZE"
  --max_train_steps "$MAX_TRAIN_STEPS" --learning_rate "$LEARNING_RATE" --dmd_noise_levels "$DMD_NOISE_LEVELS"
  --generator_update_interval "$GENERATOR_UPDATE_INTERVAL" --distill_cfg "$DISTILL_CFG"
  --checkpointing_steps "$CHECKPOINTING_STEPS" --validation_steps "$VALIDATION_STEPS" "$@")
echo "+ ${CMD[*]}"
exec "${CMD[@]}"
