#!/usr/bin/env bash
# LoRA fine-tuning (Mochi, or MODEL_TYPE=wan): scripts/finetune_mochi.sh with --use_lora (same environment variables,
# same parallelism: any NUM_GPUS and SP_SIZE). Extra arguments pass through, e.g. --optimizer prodigy.
#
#   bash scripts/finetune_mochi_lora.sh                                   # tiny model, CPU
#   MODEL_PATH=data/mochi NUM_GPUS=8 SP_SIZE=2 LORA_RANK=64 LORA_ALPHA=64 bash scripts/finetune_mochi_lora.sh
# Writes OUTPUT_DIR/lora/pytorch_lora_weights.safetensors (diffusers format). Load it with
#   pipe.load_lora_weights(dir, adapter_name="fastvideo"); pipe.set_adapters("fastvideo", LORA_ALPHA / LORA_RANK)
# or fold it into the base: python -m fastvideo.training.lora fuse --model_path ... --lora_path ... --output ...
set -euo pipefail
cd "$(dirname "$0")/.."
export OUTPUT_DIR=${OUTPUT_DIR:-outputs/lora-${MODEL_TYPE:-mochi}}
export LEARNING_RATE=${LEARNING_RATE:-1e-4}
LORA_RANK=${LORA_RANK:-128}
LORA_ALPHA=${LORA_ALPHA:-256}
exec bash scripts/finetune_mochi.sh --use_lora --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" "$@"
