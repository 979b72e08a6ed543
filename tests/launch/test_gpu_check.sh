#!/usr/bin/env bash
# launch/gpu_check.sh on a machine without a GPU: a fake nvidia-smi first in PATH (failing, then
# succeeding with no GPU listed) must give exit code 3, the one line, the no_gpu report, in < 5 s.
# Also: --plan lists every step's budget, summing to <= 480; --dry-run prints and reports every
# step with what it would run (kvmbench: kvm_bench on cuda); bad usage exits 2 with one line.
#   tests/launch/test_gpu_check.sh [KVM_BENCH]   with the kvm_bench binary: --device cuda where no
#   GPU is visible (CUDA_VISIBLE_DEVICES=-1 hides any) and bad flags exit 2 with one error line
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$tmp/bin"
for variant in failing empty; do
  if [ $variant = failing ]; then printf '#!/bin/sh\nexit 9\n' > "$tmp/bin/nvidia-smi"
  else printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/nvidia-smi"; fi
  chmod +x "$tmp/bin/nvidia-smi"
  out=$tmp/out_$variant
  t0=$(date +%s%N)
  rc=0
  stdout=$(PATH="$tmp/bin:$PATH" GPU_CHECK_OUT="$out" bash "$root/launch/gpu_check.sh" 2>"$tmp/err") || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ $rc -eq 3 ] || fail "$variant nvidia-smi: exit code $rc, expected 3"
  [ "$stdout" = "gpu_check: no GPU (nvidia-smi found none): nothing to check" ] || fail "$variant: stdout '$stdout'"
  [ $ms -lt 5000 ] || fail "$variant: took ${ms} ms"
  grep -q '"gpu": null' "$out/gpu_check.json" || fail "$variant: report lacks \"gpu\": null"
  grep -q '"status": "no_gpu"' "$out/gpu_check.json" || fail "$variant: report lacks status no_gpu"
  echo "ok: $variant nvidia-smi -> exit 3 in ${ms} ms"
done

steps=(build ctest kvmbench gpt2 kvm120m)
plan=$(bash "$root/launch/gpu_check.sh" --plan) || fail "--plan exited $?"
for s in "${steps[@]}"; do grep -Eq "^$s +[0-9]+ " <<<"$plan" || fail "--plan lacks step $s"; done
sum=$(awk '$1 != "step" && $1 != "total" && $2 ~ /^[0-9]+$/ {s += $2} END {print s}' <<<"$plan")
total=$(awk '$1 == "total" {print $2}' <<<"$plan")
[ "$sum" -gt 0 ] && [ "$sum" -le 480 ] || fail "--plan budgets sum to $sum"
[ "$sum" = "$total" ] || fail "--plan total $total != sum $sum"
echo "ok: --plan budgets sum to $sum s"

rc=0
dry=$(PATH="$tmp/bin:$PATH" GPU_CHECK_OUT="$tmp/dry" bash "$root/launch/gpu_check.sh" --dry-run) || rc=$?
[ $rc -eq 0 ] || fail "--dry-run exit code $rc"
for s in "${steps[@]}"; do
  grep -q "^\[$s\] budget [0-9]*s: would run: " <<<"$dry" || fail "--dry-run does not say what $s would run"
  grep -q "\"name\": \"$s\".*\"status\": \"dry_run\"" "$tmp/dry/gpu_check.json" || fail "--dry-run report lacks step $s"
done
grep -q '^\[kvmbench\] .*would run: build-gpu/bench/kvm_bench --device cuda --T [0-9,]* --budget-s [0-9]' <<<"$dry" ||
  fail "--dry-run: kvmbench does not run kvm_bench on cuda"
grep -q '"status": "dry_run"' "$tmp/dry/gpu_check.json" || fail "--dry-run report lacks status dry_run"
if command -v python3 >/dev/null; then
  for f in "$tmp/dry/gpu_check.json" "$tmp/out_failing/gpu_check.json"; do
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" || fail "$f is not valid JSON"
  done
fi
echo "ok: --dry-run"

rc=0
err=$(bash "$root/launch/gpu_check.sh" --bogus 2>&1 >/dev/null) || rc=$?
[ $rc -eq 2 ] || fail "bad usage exit code $rc"
[[ $err == "gpu_check: error: "* && $err != *$'\n'* ]] || fail "bad usage message '$err'"
echo "ok: bad usage -> exit 2"

if [ $# -ge 1 ]; then
  for args in "--device cuda" "--device cuda --T 1024,512" "--bogus 1" "--max-T 4096 --device cuda"; do
    rc=0
    # shellcheck disable=SC2086  # the flags split on purpose
    err=$(CUDA_VISIBLE_DEVICES=-1 "$1" $args 2>&1 >/dev/null) || rc=$?
    [ $rc -eq 2 ] || fail "kvm_bench $args: exit code $rc, expected 2"
    [[ $err == "kvm_bench: error: "* && $err != *$'\n'* ]] || fail "kvm_bench $args: message '$err'"
  done
  echo "ok: kvm_bench --device cuda without a GPU and bad flags -> exit 2, one line"
fi
