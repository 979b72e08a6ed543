#!/usr/bin/env bash
# kvmtrain vs tuned PyTorch on CPU for GPT-2 124M at B=4, T=64 and T=256, same threads, same run,
# fp32 and bf16 (PyTorch: autocast). PyTorch gets its best configuration: tcmalloc preloaded and,
# for fp32, OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 (PASSIVE slows its bf16 path,
# so bf16 runs without it). OPENBLAS_CORETYPE stays as the environment sets it.
# Writes bench/results/train_bench.json and prints a table of the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-$(nproc)}"
steps="${STEPS:-4}"
out=bench/results
runs=$(mktemp -d)  # one JSON per run; train_bench.json in $out gathers them
trap 'rm -rf "$runs"' EXIT
mkdir -p "$out"
tcmalloc=$(ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null || true)
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
for T in 64 256; do
  for prec in fp32 bf16; do
    ./build/bench/train_bench --B 4 --T $T --steps "$steps" --precision $prec --out "$runs/kvmtrain_${prec}_T$T.json"
    if [ $prec = fp32 ]; then
      LD_PRELOAD="$tcmalloc" OMP_WAIT_POLICY=PASSIVE OPENBLAS_THREAD_TIMEOUT=4 /usr/bin/python3 bench/torch_gpt2_bench.py \
        --B 4 --T $T --steps "$steps" --precision $prec --out "$runs/pytorch_${prec}_T$T.json"
    else
      LD_PRELOAD="$tcmalloc" /usr/bin/python3 bench/torch_gpt2_bench.py \
        --B 4 --T $T --steps "$steps" --precision $prec --out "$runs/pytorch_${prec}_T$T.json"
    fi
  done
done
/usr/bin/python3 - "$runs" "$out" <<'PY'
import json, sys, os
d, out = sys.argv[1], sys.argv[2]
rows = []
print(f"\n{'prec':>5} {'T':>5} {'kvmtrain tok/s':>15} {'pytorch tok/s':>14} {'ratio':>6} {'kvmtrain MFU':>13} {'MFU paired':>11}"
      f" {'oneDNN peak GF/s':>17} {'OpenBLAS GF/s':>14}")
for prec in ("fp32", "bf16"):
    for T in (64, 256):
        k = json.load(open(os.path.join(d, f"kvmtrain_{prec}_T{T}.json")))
        p = json.load(open(os.path.join(d, f"pytorch_{prec}_T{T}.json")))
        r = k["tokens_per_s"] / p["tokens_per_s"]
        rows.append({"precision": prec, "T": T, "kvmtrain": k, "pytorch": p, "ratio": r})
        print(f"{prec:>5} {T:>5} {k['tokens_per_s']:>15.1f} {p['tokens_per_s']:>14.1f} {r:>6.2f} {100*k['mfu']:>12.1f}%"
              f" {100*k['mfu_paired']:>10.1f}%"
              f" {k['gemm_peak_flops']/1e9:>17.1f} {k['openblas_sgemm_peak_flops']/1e9:>14.1f}")
json.dump(rows, open(os.path.join(out, "train_bench.json"), "w"), indent=2)
PY
