#!/usr/bin/env bash
# Multi-process training on one machine: launch/mpirun.sh NP CONFIG [kvmtrain train flags...]
# One rank per core (binding each to its cores), OpenMP threads per rank = cores / NP, root-safe
# Open MPI flags, and the loopback-only transport that starts fastest here. Set
# parallel.data x parallel.tensor = NP in the config or with --set.
# Example: launch/mpirun.sh 2 configs/default.yaml --set parallel.data=2
set -euo pipefail
cd "$(dirname "$0")/.."
np="${1:?usage: launch/mpirun.sh NP CONFIG [flags...]}"
shift
cores=$(nproc)
threads=$(( cores / np > 0 ? cores / np : 1 ))
extra=()
[ "$np" -gt "$cores" ] && extra+=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
exec mpirun -np "$np" "${extra[@]}" --bind-to core --map-by "slot:PE=$threads" \
  --mca pml ob1 -x OMP_NUM_THREADS="$threads" -x OPENBLAS_NUM_THREADS="$threads" \
  ./build/kvmtrain train "$@"
