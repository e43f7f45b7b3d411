#!/usr/bin/env bash
# Set up, then run the pipeline end to end on the embedded tiny default (CPU is enough):
# build the tiny Mochi model, write a synthetic dataset of real mp4 clips, preprocess it to latents.
# Fine-tuning, distillation and sampling join this script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
start=$(date +%s)

bash scripts/setup.sh
echo "== 1/3 tiny model"
"$PYTHON" -m fastvideo.models.tiny --model_type mochi --output data/tiny-mochi
echo "== 2/3 synthetic dataset"
"$PYTHON" -m fastvideo.data_preprocess.synthetic --output data/synthetic
echo "== 3/3 preprocessing to latents"
DATA_DIR=data/synthetic/mochi OUTPUT_DIR=data/processed bash scripts/finetune_data_gen.sh --verify 2

echo "quickstart done in $(( $(date +%s) - start )) s: model data/tiny-mochi, clips data/synthetic,"
echo "latents data/processed (index videos2caption.json, report preprocess_report.json, verify/*.mp4)"
