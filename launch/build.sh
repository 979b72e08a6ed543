#!/usr/bin/env bash
# Configures and builds kvmtrain in build/ (Release). The CUDA backend is ON whenever nvcc exists,
# so a CUDA compile error fails the build instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=OFF
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
  cuda=ON
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKVMTRAIN_CUDA="${KVMTRAIN_CUDA:-$cuda}" >/dev/null
cmake --build build -j "$(nproc)"
