#!/usr/bin/env bash
# Installs every Debian package kvmtrain needs. Idempotent: when all are present it only checks.
set -euo pipefail

packages=(
  build-essential cmake git pkg-config
  libopenmpi-dev openmpi-bin          # MPI data/tensor parallel
  libhdf5-dev                         # token shards
  libyaml-cpp-dev                     # configs
  libgtest-dev libbenchmark-dev       # tests, micro-benchmarks
  libomp-dev libopenblas-dev          # CPU threads, sgemm
  libdnnl-dev                         # oneDNN: the CPU GEMMs (AVX-512, AVX-512 BF16)
  ocl-icd-opencl-dev                  # only a Recommends of libdnnl-dev, yet its CMake config requires OpenCL
  python3-torch python3-numpy python3-h5py   # reference models and interop tests (/usr/bin/python3)
  bible-kjv                           # the default corpus
  nodejs                              # the independent GPT-2 tokenizer used to make test fixtures
  libtcmalloc-minimal4                # the tuned PyTorch peer in bench/
  python3-matplotlib                  # bench/ plots (PNG)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
