#!/usr/bin/env bash
# CogVideoX LoRA fine-tuning with the settings of diffusers' examples/cogvideo/train_cogvideox_lora.py and
# cogvideox-factory's training/cogvideox/cogvideox_text_to_video_lora.py: rank 64, alpha 64, lr 1e-4, AdamW
# (0.9, 0.95), weight decay 1e-4, cosine_with_restarts with warm-up, clipping at 1.0, every block
# checkpointed, validation with guidance 6 (scripts/cogvideox_recipe.sh holds the flags and the data step).
# It is scripts/finetune_mochi_lora.sh with MODEL_TYPE=cogvideox: the same environment variables (NUM_GPUS,
# SP_SIZE, MAX_TRAIN_STEPS, LEARNING_RATE, TRAIN_BATCH_SIZE, CHECKPOINTING_STEPS, VALIDATION_STEPS, ...) plus
# LORA_RANK (64), LORA_ALPHA (64) and those of cogvideox_recipe.sh. Extra arguments pass through to
# `python -m fastvideo.train` (see --help) and override the recipe's flags.
#
#   bash scripts/finetune_cogvideox_lora.sh           # tiny CogVideoX-5b layout, synthetic CogVideoX root, CPU
#   MAX_TRAIN_STEPS=4 VALIDATION_STEPS=0 bash scripts/finetune_cogvideox_lora.sh --lora_rank 8
# A real run (CogVideoX-5b; DATA_DIR is a CogVideoX root: prompts.txt + videos.txt, preprocessed once into
# DATA_JSON_PATH):
#   python scripts/download_hf.py --repo_id THUDM/CogVideoX-5b --local_dir data/CogVideoX-5b
#   MODEL_PATH=data/CogVideoX-5b DATA_DIR=/data/my-videos DATA_JSON_PATH=data/processed-my-videos \
#     NUM_FRAMES=49 HEIGHT=480 WIDTH=720 TRAIN_FPS=8 ID_TOKEN=BW_STYLE VALIDATION_PROMPTS="a goat:::a panda" \
#     NUM_GPUS=8 MAX_TRAIN_STEPS=3000 LR_WARMUP_STEPS=400 CHECKPOINTING_STEPS=1000 VALIDATION_STEPS=500 \
#     bash scripts/finetune_cogvideox_lora.sh --validation_sampling_steps 50
# Writes OUTPUT_DIR/lora/pytorch_lora_weights.safetensors (diffusers format). Load it with
#   pipe = CogVideoXPipeline.from_pretrained(MODEL_PATH)
#   pipe.load_lora_weights(OUTPUT_DIR + "/lora", adapter_name="fastvideo"); pipe.set_adapters("fastvideo", LORA_ALPHA / LORA_RANK)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cogvideox_recipe.sh
export OUTPUT_DIR=${OUTPUT_DIR:-outputs/lora-cogvideox}
export LEARNING_RATE=${LEARNING_RATE:-1e-4}
export LORA_RANK=${LORA_RANK:-64}
export LORA_ALPHA=${LORA_ALPHA:-64}

CMD=(bash scripts/finetune_mochi_lora.sh "${SEED_FLAGS[@]}" "$@")
echo "+ MODEL_TYPE=$MODEL_TYPE MODEL_PATH=$MODEL_PATH DATA_JSON_PATH=$DATA_JSON_PATH OUTPUT_DIR=$OUTPUT_DIR" \
  "LEARNING_RATE=$LEARNING_RATE LORA_RANK=$LORA_RANK LORA_ALPHA=$LORA_ALPHA ${CMD[*]}"
exec "${CMD[@]}"
