#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite under ctest.
# Text-task tests read tinyshakespeare.txt from $KVLAB_DATA_DIR (default: ../shared/data
# next to the checkout, when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
if [ -z "${KVLAB_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export KVLAB_DATA_DIR="$(cd ../shared/data && pwd)"
fi
cd build && ctest --output-on-failure -j2 "$@"
