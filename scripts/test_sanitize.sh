#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang 14, -O1),
# built in build-san/ with -DKVLAB_FUZZ=ON (which implies -DKVLAB_SANITIZE=ON; the same
# build holds the fuzz targets of scripts/fuzz.sh). Any sanitizer report fails the test
# that triggered it (halt_on_error; UB is not recoverable), including reports from the
# kvlab processes the CLI tests start. Extra arguments go to ctest (e.g. -R hostile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
source scripts/sanitize_env.sh
cmake --build build-san -j"$(nproc)"
if [ -z "${KVLAB_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export KVLAB_DATA_DIR="$(cd ../shared/data && pwd)"
fi
cd build-san && ctest --output-on-failure -j2 "$@"
