# Sourced by scripts/test_sanitize.sh and scripts/fuzz.sh: configures build-san/ (clang 14,
# ASan + UBSan + the libFuzzer targets) and sets the sanitizers' run-time options.
export CCACHE_BASEDIR="$(pwd)"
# -g1 puts the build folder into the objects' debug info, and ccache then keys on it; without
# that, a clone elsewhere reuses the cache (its stack traces name the first build's folder).
export CCACHE_NOHASHDIR=1
if [ ! -f build-san/CMakeCache.txt ]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-san -DCMAKE_BUILD_TYPE=Release -DKVLAB_FUZZ=ON >/dev/null
else
  cmake -S . -B build-san >/dev/null
fi
# detect_leaks stays on; scripts/lsan.supp lists only what runtimes keep alive until exit
# by design (OpenMP thread pools, Open MPI; see the file).
# fast_unwind_on_malloc=0: full allocation stacks through uninstrumented libraries (built
# without frame pointers), which the suppressions need to see whose allocation it was.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:fast_unwind_on_malloc=0"
export LSAN_OPTIONS="suppressions=$(pwd)/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# Open MPI unloads its components at exit, which would leave their allocations (freed by
# nobody, by design) without names; keeping them loaded lets lsan.supp name them.
export OMPI_MCA_mca_base_component_disable_dlclose=1
