#!/usr/bin/env bash
# Data-parallel scaling on one machine: bench/dp_bench (GPT-2 124M, per rank B=4 x T=64 by default;
# flags pass through) on 1 and 2 ranks of THREADS threads each (default 1, so 2 ranks use twice
# the cores), every mode. Writes bench/results/dp_bench.json (both runs and the speed-ups) and
# prints each run's table, then the 2-rank tokens/s over the 1-rank tokens/s per mode.
# Ranks are not bound to cores, so that the scheduler of a shared machine places them. BUILD names
# the build directory (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-1}"
steps="${STEPS:-3}"
build="${BUILD:-build}"
out=bench/results
mkdir -p "$out"
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
for np in 1 2; do
  mpirun -np "$np" "${extra[@]}" --oversubscribe --bind-to none --mca pml ob1 \
    -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$build/bench/dp_bench" --steps "$steps" --out "$runs/np$np.json" "$@"
done
/usr/bin/python3 - "$runs" "$out" <<'PY'
import json, sys
runs, d = sys.argv[1:]
one, two = (json.load(open(f"{runs}/np{n}.json")) for n in (1, 2))
base = one["modes"][0]["tokens_per_s"]
speedup = {m["mode"]: m["tokens_per_s"] / base for m in two["modes"]}
json.dump({"np1": one, "np2": two, "speedup_2_over_1": speedup}, open(f"{d}/dp_bench.json", "w"), indent=2)
print(f"\n2 ranks over 1 rank ({base:.1f} tok/s), ideal 2.00:")
for mode, s in speedup.items():
    print(f"  {mode:32s} {s:5.2f}x")
PY
