#!/usr/bin/env bash
# Sourced by the recipes (not run on its own): the model family and the default paths that follow it.
#   MODEL_TYPE (mochi): mochi | wan | cogvideox | hunyuan. The embedded tiny model of a family is data/tiny-$MODEL_TYPE;
#   its preprocessed synthetic set is data/processed (Mochi, as before) or data/processed-$MODEL_TYPE.
MODEL_TYPE=${MODEL_TYPE:-mochi}
TINY_MODEL=data/tiny-$MODEL_TYPE
if [[ "$MODEL_TYPE" == mochi ]]; then
  PROCESSED_DEFAULT=data/processed
else
  PROCESSED_DEFAULT=data/processed-$MODEL_TYPE
fi

# Build the embedded tiny model on first use, so a recipe runs on a fresh machine.
ensure_tiny_model() {
  if [[ "$1" == "$TINY_MODEL" && ! -f "$1/model_index.json" ]]; then
    "$PYTHON" -m fastvideo.models.tiny --model_type "$MODEL_TYPE" --output "$1"
  fi
}
