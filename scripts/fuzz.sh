#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build-san/, shared with scripts/test_sanitize.sh) and
# fuzzes each for a share of SECONDS (default 60: 30 s per target), starting from the seed
# corpus in tests/fuzz/corpus/<target>/ (copied; new inputs stay in build-san/corpus/).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]       targets: fuzz_config fuzz_checkpoint
# A crash, sanitizer report, timeout (10 s) or out-of-memory (2 GiB) fails the script and
# leaves the input in build-san/artifacts/<target>/, except crashes whose stack reaches
# libhdf5 before any kvlab frame: libhdf5 is not hardened against malformed files, and
# those are counted as known (README, "Fuzzing"), printed, and fuzzing goes on.
# Reproduce one input: build-san/<target> FILE
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_config fuzz_checkpoint)
bash scripts/install_deps.sh
source scripts/sanitize_env.sh
cmake --build build-san -j"$(nproc)" --target "${targets[@]}"
# Leaks inside libhdf5 (its error paths on malformed files) would each stop the fuzzer and
# count as known libhdf5 crashes below anyway (their first frame is libhdf5's); suppressing
# them keeps the fuzzer running. kvlab's own leaks still stop it.
supp=build-san/lsan_fuzz.supp
{ cat scripts/lsan.supp; echo "leak:libhdf5"; } > "$supp"
export LSAN_OPTIONS="suppressions=$(pwd)/$supp:print_suppressions=0"

# The first stack frame in libhdf5 or in kvlab's own code decides whose crash it is.
first_owner() {
  awk '/^ *#[0-9]+ / { if ($0 ~ /libhdf5/) { print "libhdf5"; exit } if ($0 ~ /(framework|experiments|tests\/fuzz)\//) { print "kvlab"; exit } }' "$1"
}
status=0
per_target=$((total / ${#targets[@]}))
for t in "${targets[@]}"; do
  corpus=build-san/corpus/$t artifacts=build-san/artifacts/$t/
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz/corpus/$t/* "$corpus"/ 2>/dev/null || true
  case $t in
    fuzz_config) max_len=8192 ;;
    *) max_len=131072 ;;
  esac
  deadline=$((SECONDS + per_target)) known=0
  while ((SECONDS < deadline)); do
    log=build-san/$t.log
    if ./build-san/$t "$corpus" -max_total_time=$((deadline - SECONDS)) -max_len=$max_len -timeout=10 \
         -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
      break
    fi
    if [ "$(first_owner "$log")" = libhdf5 ]; then
      known=$((known + 1))
      echo "$t: known libhdf5 crash on a malformed file (kept in $artifacts):"
      grep -m1 -E "ERROR: (AddressSanitizer|libFuzzer)" "$log" || true
      ((known < 20)) && continue
      echo "$t: stopping after $known known libhdf5 crashes"
      break
    fi
    echo "$t: FINDING (see $log; input in $artifacts):"
    grep -A30 -m1 -E "ERROR: |runtime error|==ERROR" "$log" | head -40
    status=1
    break
  done
  echo "$t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' build-san/$t.log || echo "?") inputs, $known known libhdf5 crash(es)"
done
exit $status
