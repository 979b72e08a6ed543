#!/usr/bin/env bash
# Installs, builds and runs every test through ctest. Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" "$@"
