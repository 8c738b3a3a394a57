#!/usr/bin/env bash
# Installs, with apt-get, whatever kvlab needs that this Debian 12 machine lacks.
# Safe to rerun: packages already present are skipped.
set -euo pipefail
packages=(
  cmake g++ make ccache pkg-config           # build
  libeigen3-dev libopenblas0-openmp           # math: Eigen; OpenBLAS (OpenMP build) for GEMM
  libyaml-cpp-dev libhdf5-dev libfmt-dev doctest-dev
  hdf5-tools                                  # h5dump, used by tests
  clang-14 libclang-rt-14-dev libomp-14-dev   # fuzzing (libFuzzer), scripts/fuzz.sh
  openmpi-bin libopenmpi-dev                  # MPI: distributed sweeps and training (optional, KVLAB_MPI)
  python3 python3-h5py python3-matplotlib python3-numpy   # scripts/ (plots, checks)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
