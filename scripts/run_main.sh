#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build, and run a
# short comparison sweep of the attention variants (mha, gqa, mqa, mla) on the embedded
# MQAR task (no data files; minutes on 2 cores, two single-threaded workers), then print
# the comparison table and draw its plots. Rerunning resumes: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
status=0
./build/kvlab sweep configs/compare_attention.yaml --jobs 2 "$@" || status=$?
./build/kvlab report results/compare-attention.h5
/usr/bin/python3 scripts/plot_results.py results/compare-attention.h5 --out-dir results/
exit $status
