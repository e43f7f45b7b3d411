#!/usr/bin/env bash
# CogVideoX full fine-tuning (SFT) with the settings of cogvideox-factory's
# training/cogvideox/cogvideox_text_to_video_sft.py: lr 1e-4, AdamW (0.9, 0.95), weight decay 1e-4,
# cosine_with_restarts with warm-up, clipping at 1.0, every block checkpointed, validation with guidance 6
# (scripts/cogvideox_recipe.sh holds the flags and the data step). It is scripts/finetune_mochi.sh with
# MODEL_TYPE=cogvideox: the same environment variables (NUM_GPUS, SP_SIZE, MAX_TRAIN_STEPS, LEARNING_RATE,
# TRAIN_BATCH_SIZE, CHECKPOINTING_STEPS, VALIDATION_STEPS, ...) plus those of cogvideox_recipe.sh. Extra
# arguments pass through to `python -m fastvideo.train` (see --help) and override the recipe's flags.
#
#   bash scripts/finetune_cogvideox_sft.sh            # tiny CogVideoX-5b layout, synthetic CogVideoX root, CPU
# A real run (the factory's SFT example: 20000 steps, 800 warm-up, 4 micro-steps per step; FSDP2 shards the
# 5B weights and AdamW state over the GPUs):
#   python scripts/download_hf.py --repo_id THUDM/CogVideoX-5b --local_dir data/CogVideoX-5b
#   MODEL_PATH=data/CogVideoX-5b DATA_DIR=/data/my-videos DATA_JSON_PATH=data/processed-my-videos \
#     NUM_FRAMES=49 HEIGHT=480 WIDTH=720 TRAIN_FPS=8 NUM_GPUS=8 MAX_TRAIN_STEPS=20000 LR_WARMUP_STEPS=800 \
#     CHECKPOINTING_STEPS=2000 VALIDATION_STEPS=1000 \
#     bash scripts/finetune_cogvideox_sft.sh --gradient_accumulation_steps 4 --validation_sampling_steps 50
# Writes OUTPUT_DIR/transformer/ (diffusers format) and links the base's other components beside it, so
# CogVideoXPipeline.from_pretrained(OUTPUT_DIR) loads the fine-tuned model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cogvideox_recipe.sh
export OUTPUT_DIR=${OUTPUT_DIR:-outputs/sft-cogvideox}
export LEARNING_RATE=${LEARNING_RATE:-1e-4}

CMD=(bash scripts/finetune_mochi.sh "${SEED_FLAGS[@]}" "$@")
echo "+ MODEL_TYPE=$MODEL_TYPE MODEL_PATH=$MODEL_PATH DATA_JSON_PATH=$DATA_JSON_PATH OUTPUT_DIR=$OUTPUT_DIR" \
  "LEARNING_RATE=$LEARNING_RATE ${CMD[*]}"
exec "${CMD[@]}"
