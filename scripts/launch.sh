#!/usr/bin/env bash
# Sourced by the recipes (not run on its own): sets LAUNCH to `python -m fastvideo.launch`, which is
# torchrun plus a preflight check (bad flags, paths or degrees: one `error:` line, exit 2, before any
# worker starts) and a one-line summary when a worker fails. From the environment:
#   NUM_GPUS (1) processes per node; NNODES (1); for several nodes NODE_RANK, MASTER_ADDR, MASTER_PORT (29500).

fail() {
  echo "error: $*" >&2
  exit 2
}

NUM_GPUS=${NUM_GPUS:-1}
NNODES=${NNODES:-1}
if [[ "$NNODES" == 1 ]]; then
  LAUNCH=("$PYTHON" -m fastvideo.launch --standalone --nproc_per_node "$NUM_GPUS")
else
  [[ -n "${NODE_RANK:-}" && -n "${MASTER_ADDR:-}" ]] ||
    fail "NNODES=$NNODES needs NODE_RANK and MASTER_ADDR (and MASTER_PORT, default 29500) set on every node"
  LAUNCH=("$PYTHON" -m fastvideo.launch --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NUM_GPUS"
          --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
fi
