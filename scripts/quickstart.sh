#!/usr/bin/env bash
# Set up, then run the pipeline end to end on the embedded tiny default (CPU is enough; about 10 min
# on 2 cores, Wan about 17): build the tiny model, write all 84 synthetic clips (7 colours x 3 shapes
# x 4 directions) as real mp4s, preprocess them to latents, fine-tune the tiny DiT on them, train a
# LoRA on 2 processes with FSDP2 + sequence parallelism (gloo on CPU), distill the fine-tuned model to
# 8 steps, sample it with the torchrun sampler (SP over 2 processes), and say what the samples show.
#
#   bash scripts/quickstart.sh                  # Mochi: data/tiny-mochi, data/processed, outputs/*-mochi, outputs/samples
#   MODEL_TYPE=wan bash scripts/quickstart.sh   # Wan 2.1: data/tiny-wan, data/processed-wan, outputs/*-wan, outputs/samples-wan
#
# Both families read the same synthetic clips (data/synthetic/mochi is the Mochi-style folder format,
# not a family) at 25 frames, which Mochi's 6k+1 and Wan's 4k+1 frame rules both allow.
# FINETUNE_STEPS and DISTILL_STEPS trade time for pictures: with far fewer steps the same stages run
# in a few minutes, and the samples show less of their prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/family.sh  # MODEL_TYPE (mochi), TINY_MODEL, PROCESSED_DEFAULT
# Per family (each overridable): fine-tuning and distillation steps, and the guidance the distilled
# model samples with. Wan's fine-tuning step costs about 1.7x Mochi's on CPU (its cross-attention covers
# 512 text tokens); its distilled model needs guidance at sampling to show its prompts' motion
# (9 of 18 properties unguided, 13 with guidance 3: docs/benchmarks.md).
case "$MODEL_TYPE" in
  mochi) FINETUNE_STEPS=${FINETUNE_STEPS:-3000} DISTILL_STEPS=${DISTILL_STEPS:-1000} GUIDANCE_SCALE=${GUIDANCE_SCALE:-1}
    SAMPLES=outputs/samples ;;
  wan) FINETUNE_STEPS=${FINETUNE_STEPS:-3000} DISTILL_STEPS=${DISTILL_STEPS:-1000} GUIDANCE_SCALE=${GUIDANCE_SCALE:-3}
    SAMPLES=outputs/samples-wan ;;
  *) echo "error: MODEL_TYPE=$MODEL_TYPE; the quickstart runs mochi or wan" >&2; exit 2 ;;
esac
export MODEL_TYPE
FINETUNED=outputs/finetune-$MODEL_TYPE
DISTILLED=outputs/distill-$MODEL_TYPE
start=$(date +%s)

bash scripts/setup.sh
echo "== 1/8 tiny model ($MODEL_TYPE)"
"$PYTHON" -m fastvideo.models.tiny --model_type "$MODEL_TYPE" --output "$TINY_MODEL"
echo "== 2/8 synthetic dataset (all 84 colour x shape x direction clips)"
"$PYTHON" -m fastvideo.data_preprocess.synthetic --output data/synthetic --num_videos 84
echo "== 3/8 preprocessing to latents"
# --overwrite: latents made with other settings or another tiny model (e.g. before an update) are redone;
# with the same settings and model, finished items are reused.
DATA_DIR=data/synthetic/mochi OUTPUT_DIR=$PROCESSED_DEFAULT bash scripts/finetune_data_gen.sh --verify 2 --overwrite
echo "== 4/8 fine-tuning, $FINETUNE_STEPS steps (one process: on 2 CPU cores the fastest; EMA, checkpoints, validation)"
# On GPUs: NUM_GPUS=8 SP_SIZE=2 ... (the LoRA step below runs this same trainer on 2 processes).
NUM_GPUS=1 MAX_TRAIN_STEPS=$FINETUNE_STEPS TRAIN_BATCH_SIZE=4 LEARNING_RATE=5e-4 \
  CHECKPOINTING_STEPS=1000 VALIDATION_STEPS=$FINETUNE_STEPS OUTPUT_DIR=$FINETUNED \
  bash scripts/finetune_mochi.sh --use_ema --lr_warmup_steps 50 --weight_decay 0
echo "== 5/8 LoRA (rank 16, FSDP2 + SP over 2 processes)"
NUM_GPUS=2 SP_SIZE=2 MAX_TRAIN_STEPS=20 LORA_RANK=16 LORA_ALPHA=16 OUTPUT_DIR=outputs/lora-$MODEL_TYPE \
  bash scripts/finetune_mochi_lora.sh
echo "== 6/8 consistency distillation of the fine-tuned model to 8 steps, $DISTILL_STEPS steps (PCM, EMA)"
NUM_GPUS=1 MAX_TRAIN_STEPS=$DISTILL_STEPS LEARNING_RATE=1e-4 DISTILL_CFG=0 CHECKPOINTING_STEPS=1000 \
  VALIDATION_STEPS=$DISTILL_STEPS MODEL_PATH=$FINETUNED OUTPUT_DIR=$DISTILLED \
  bash scripts/distill_t2v.sh --train_batch_size 4 --use_ema --ema_decay 0.95 --weight_decay 0
echo "== 7/8 sampling the distilled model in 8 PCM steps, guidance $GUIDANCE_SCALE (sequence parallel over 2 processes)"
rm -rf "$SAMPLES"
NUM_GPUS=2 MODEL_PATH=$DISTILLED OUTPUT_PATH=$SAMPLES GUIDANCE_SCALE=$GUIDANCE_SCALE \
  bash scripts/sample_t2v_mochi.sh --seeds 0,1
echo "== 8/8 what the samples show (read back from their pixels), and a picture of them"
"$PYTHON" scripts/describe_clips.py "$SAMPLES"/*.mp4
"$PYTHON" scripts/video_strip.py "$SAMPLES"/*.mp4 --output "$SAMPLES.png"

echo "quickstart done in $(( $(date +%s) - start )) s: model $TINY_MODEL, clips data/synthetic,"
echo "latents $PROCESSED_DEFAULT (index videos2caption.json, report preprocess_report.json, verify/*.mp4),"
echo "fine-tuned $FINETUNED (transformer/, transformer_ema/, metrics.jsonl, loss_curve.png, validation/),"
echo "LoRA outputs/lora-$MODEL_TYPE/lora/pytorch_lora_weights.safetensors,"
echo "distilled $DISTILLED (a pipeline folder with the PCM scheduler; validation/step-N/steps-K_cfg-G/*.mp4),"
echo "samples: $(ls "$SAMPLES"/*.mp4 | tr '\n' ' ')"
echo "all samples in one picture: $SAMPLES.png"
