#!/usr/bin/env bash
# Install fastvideo and its dependencies into the current Python environment.
#   bash scripts/setup.sh                       # core + dev extras (all the test suite imports)
#   EXTRAS=demo bash scripts/setup.sh           # core + the gradio demo only
#   FASTVIDEO_CONSTRAINTS=none bash scripts/setup.sh   # newest releases pyproject.toml allows, unpinned
# Versions: constraints.txt pins every package to the release the test suite passed with (on the
# Python version its markers name; other Pythons resolve freely). bash scripts/update_constraints.sh
# moves the pins forward.
# Torch: an installed torch (e.g. your CUDA build) is kept, and pinned while the rest installs so no
# dependency can replace it. With no torch, a machine with an NVIDIA GPU gets PyPI's default (CUDA)
# torch; one without gets the CPU wheel torch==$TORCH_CPU_VERSION (set TORCH_INDEX_URL, e.g.
# https://download.pytorch.org/whl/cpu, if your index lacks a CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}
CONSTRAINTS=${FASTVIDEO_CONSTRAINTS:-constraints.txt}
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)

if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found and no torch: installing PyPI's CUDA torch"
  "${PIP[@]}" torch
else
  echo "[setup] no torch and no CUDA GPU: installing the CPU wheel torch==$TORCH_CPU_VERSION"
  "${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_CPU_VERSION"
fi

# The torch now installed is a constraint too: nothing below may swap it for another build.
keep_torch=$(mktemp)
trap 'rm -f "$keep_torch"' EXIT
"$PYTHON" -c 'import torch; print(f"torch=={torch.__version__}")' >"$keep_torch"
PINS=(-c "$keep_torch")
if [[ "$CONSTRAINTS" != none ]]; then
  [[ -f "$CONSTRAINTS" ]] || { echo "error: constraints file $CONSTRAINTS not found (FASTVIDEO_CONSTRAINTS=none to go unpinned)" >&2; exit 2; }
  PINS+=(-c "$CONSTRAINTS")
  echo "[setup] installing fastvideo[$EXTRAS] (editable), versions pinned by $CONSTRAINTS"
else
  echo "[setup] installing fastvideo[$EXTRAS] (editable), unpinned"
fi
"${PIP[@]}" "${PINS[@]}" -e ".[$EXTRAS]"
"$PYTHON" -c "import torch, diffusers, fastvideo; print(f'[setup] ok: torch {torch.__version__}, diffusers {diffusers.__version__}, cuda={torch.cuda.is_available()}')"
