#!/usr/bin/env bash
# Sourced by scripts/finetune_cogvideox_lora.sh and scripts/finetune_cogvideox_sft.sh (not run on its own):
# MODEL_TYPE=cogvideox, the training flags both recipes take from diffusers' train_cogvideox_lora.py and
# cogvideox-factory's training/cogvideox/ trainers (SEED_FLAGS), and the data step.
#
# Data: a DATA_JSON_PATH (data/processed-cogvideox) without videos2caption.json is preprocessed first, by
# scripts/finetune_data_gen.sh, from DATA_DIR or DATA_MERGE_PATH (which then need DATA_JSON_PATH set); with
# neither, from the synthetic CogVideoX-layout root data/synthetic/cogvideox (prompts.txt + videos.txt),
# generated on first use. A DATA_JSON_PATH that holds videos2caption.json is used as it is.
# Preprocessing reads NUM_FRAMES, HEIGHT, WIDTH, TRAIN_FPS, VALIDATION_PROMPT_TXT and ID_TOKEN (see that
# script), VALIDATION_PROMPTS (one string, prompts joined by ':::', as the seeds' --validation_prompt) and
# CROP (center | random | none: their --video_reshape_mode).
#
# Training defaults (environment): LR_SCHEDULER (cosine_with_restarts, one cycle), LR_WARMUP_STEPS (a tenth of
# MAX_TRAIN_STEPS), WEIGHT_DECAY (1e-4), ACTIVATION_CHECKPOINTING (all: their --gradient_checkpointing),
# VALIDATION_GUIDANCE_SCALE (6); fixed: AdamW with betas 0.9 / 0.95 and eps 1e-8, gradient norm clipped at
# 1.0, no caption dropout (--cfg 0). A later flag on the command line overrides any of them.
export MODEL_TYPE=cogvideox
export PYTHON=${PYTHON:-python3}
source scripts/family.sh
export MODEL_PATH=${MODEL_PATH:-$TINY_MODEL}
if [[ -n "${DATA_DIR:-}${DATA_MERGE_PATH:-}" && -z "${DATA_JSON_PATH:-}" ]]; then
  # Else your videos would be trained on only if the default folder did not exist yet.
  echo "error: DATA_DIR or DATA_MERGE_PATH is set: set DATA_JSON_PATH too (the folder its latents go to)" >&2
  exit 2
fi
export DATA_JSON_PATH=${DATA_JSON_PATH:-$PROCESSED_DEFAULT}
export MAX_TRAIN_STEPS=${MAX_TRAIN_STEPS:-20}
export ID_TOKEN=${ID_TOKEN:-}
LR_SCHEDULER=${LR_SCHEDULER:-cosine_with_restarts}
LR_WARMUP_STEPS=${LR_WARMUP_STEPS:-$((MAX_TRAIN_STEPS / 10))}
WEIGHT_DECAY=${WEIGHT_DECAY:-1e-4}
ACTIVATION_CHECKPOINTING=${ACTIVATION_CHECKPOINTING:-all}
VALIDATION_GUIDANCE_SCALE=${VALIDATION_GUIDANCE_SCALE:-6}
VALIDATION_PROMPTS=${VALIDATION_PROMPTS:-}
CROP=${CROP:-}

SEED_FLAGS=(--optimizer adamw --adam_beta1 0.9 --adam_beta2 0.95 --adam_eps 1e-8 --weight_decay "$WEIGHT_DECAY"
  --max_grad_norm 1.0 --lr_scheduler "$LR_SCHEDULER" --lr_warmup_steps "$LR_WARMUP_STEPS" --cfg 0
  --activation_checkpointing "$ACTIVATION_CHECKPOINTING" --validation_guidance_scale "$VALIDATION_GUIDANCE_SCALE"
  --id_token "$ID_TOKEN")

# Videos become latents once, before training (the seeds' --load_tensors path, always taken).
data_folder=${DATA_JSON_PATH%/videos2caption.json}
if [[ ! -f "$data_folder/videos2caption.json" ]]; then
  if [[ -z "${DATA_DIR:-}" && -z "${DATA_MERGE_PATH:-}" ]]; then
    DATA_DIR=data/synthetic/cogvideox
    [[ -f "$DATA_DIR/prompts.txt" ]] || "$PYTHON" -m fastvideo.data_preprocess.synthetic --output data/synthetic
  fi
  DATA_DIR=${DATA_DIR:-} OUTPUT_DIR="$data_folder" bash scripts/finetune_data_gen.sh \
    ${VALIDATION_PROMPTS:+--validation_prompts "$VALIDATION_PROMPTS"} ${CROP:+--crop "$CROP"}
fi
