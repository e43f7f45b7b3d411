#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on CPU. Extra arguments go to pytest:
#   bash scripts/test.sh                 # everything (~minutes on 2 cores)
#   bash scripts/test.sh -m "not slow"   # the quick loop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest tests "$@"
