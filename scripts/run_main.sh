#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build, and train
# the embedded default (MQAR, no data files). Extra arguments go to `kvlab train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
./build/kvlab train "$@"
