#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (GCC, -O1),
# built in build-asan/ with -DKVLAB_SANITIZE=ON. Any sanitizer report fails the test that
# triggered it (halt_on_error; UB is not recoverable), including reports from the kvlab
# processes the CLI tests start. Extra arguments go to ctest (e.g. -R hostile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
export CCACHE_BASEDIR="$(pwd)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DKVLAB_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
if [ -z "${KVLAB_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export KVLAB_DATA_DIR="$(cd ../shared/data && pwd)"
fi
# detect_leaks stays on; the suppressions file lists only libgomp's thread pool, which
# OpenMP keeps alive until exit by design (see the file).
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export LSAN_OPTIONS="suppressions=$(pwd)/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
cd build-asan && ctest --output-on-failure -j2 "$@"
