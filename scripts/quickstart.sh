#!/usr/bin/env bash
# Set up, then run the pipeline end to end on the embedded tiny default (CPU is enough):
# build the tiny Mochi model, write a synthetic dataset of real mp4 clips, preprocess it to latents,
# fine-tune and train a LoRA on 2 processes with sequence parallelism (gloo on CPU), then distill the
# fine-tuned model to 8 steps and sample it with the torchrun sampler (SP over 2 processes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
start=$(date +%s)

bash scripts/setup.sh
echo "== 1/7 tiny model"
"$PYTHON" -m fastvideo.models.tiny --model_type mochi --output data/tiny-mochi
echo "== 2/7 synthetic dataset"
"$PYTHON" -m fastvideo.data_preprocess.synthetic --output data/synthetic
echo "== 3/7 preprocessing to latents"
# --overwrite: latents made with other settings or another tiny model (e.g. before an update) are redone;
# with the same settings and model, finished items are reused.
DATA_DIR=data/synthetic/mochi OUTPUT_DIR=data/processed bash scripts/finetune_data_gen.sh --verify 2 --overwrite
echo "== 4/7 fine-tuning (FSDP2 + Ulysses SP over 2 processes, EMA, checkpoints, validation)"
NUM_GPUS=2 SP_SIZE=2 MAX_TRAIN_STEPS=20 OUTPUT_DIR=outputs/finetune-mochi bash scripts/finetune_mochi.sh --use_ema
echo "== 5/7 LoRA (rank 16, FSDP2 + SP over 2 processes)"
NUM_GPUS=2 SP_SIZE=2 MAX_TRAIN_STEPS=20 LORA_RANK=16 LORA_ALPHA=16 OUTPUT_DIR=outputs/lora-mochi \
  bash scripts/finetune_mochi_lora.sh
echo "== 6/7 consistency distillation of the fine-tuned model (PCM, FSDP2 + SP over 2 processes, EMA)"
NUM_GPUS=2 SP_SIZE=2 MAX_TRAIN_STEPS=20 MODEL_PATH=outputs/finetune-mochi OUTPUT_DIR=outputs/distill-mochi \
  bash scripts/distill_t2v.sh --use_ema
echo "== 7/7 sampling the distilled model in 8 PCM steps (sequence parallel over 2 processes)"
NUM_GPUS=2 MODEL_PATH=outputs/distill-mochi OUTPUT_PATH=outputs/samples bash scripts/sample_t2v_mochi.sh
echo "== what the samples show (read back from their pixels; the toy model does not follow prompts yet)"
"$PYTHON" scripts/describe_clips.py outputs/samples/*.mp4

echo "quickstart done in $(( $(date +%s) - start )) s: model data/tiny-mochi, clips data/synthetic,"
echo "latents data/processed (index videos2caption.json, report preprocess_report.json, verify/*.mp4),"
echo "fine-tuned outputs/finetune-mochi (transformer/, transformer_ema/, metrics.jsonl, loss_curve.png, validation/),"
echo "LoRA outputs/lora-mochi/lora/pytorch_lora_weights.safetensors,"
echo "distilled outputs/distill-mochi (a pipeline folder with the PCM scheduler; validation/step-N/steps-K_cfg-G/*.mp4),"
echo "samples: $(ls outputs/samples/*.mp4 | tr '\n' ' ')"
