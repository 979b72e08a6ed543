#!/usr/bin/env bash
# launch/gpu_check.sh on a machine without a GPU: a fake nvidia-smi first in PATH (failing, then
# succeeding with no GPU listed) must give exit code 3, the one line, the no_gpu report, in < 5 s.
# Also: --plan lists budgets summing to <= 480, --dry-run writes a dry_run report, bad usage exits 2.
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

plan=$(bash "$root/launch/gpu_check.sh" --plan) || fail "--plan exited $?"
sum=$(awk '$1 != "step" && $1 != "total" && $2 ~ /^[0-9]+$/ {s += $2} END {print s}' <<<"$plan")
total=$(awk '$1 == "total" {print $2}' <<<"$plan")
[ "$sum" -gt 0 ] && [ "$sum" -le 480 ] || fail "--plan budgets sum to $sum"
[ "$sum" = "$total" ] || fail "--plan total $total != sum $sum"
echo "ok: --plan budgets sum to $sum s"

rc=0
PATH="$tmp/bin:$PATH" GPU_CHECK_OUT="$tmp/dry" bash "$root/launch/gpu_check.sh" --dry-run >/dev/null || rc=$?
[ $rc -eq 0 ] || fail "--dry-run exit code $rc"
grep -q '"status": "dry_run"' "$tmp/dry/gpu_check.json" || fail "--dry-run report lacks status dry_run"
[ "$(grep -c '"budget_s"' "$tmp/dry/gpu_check.json")" -ge 5 ] || fail "--dry-run report lacks steps"
if command -v python3 >/dev/null; then
  for f in "$tmp/dry/gpu_check.json" "$tmp/out_failing/gpu_check.json"; do
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" || fail "$f is not valid JSON"
  done
fi
echo "ok: --dry-run"

rc=0
err=$(bash "$root/launch/gpu_check.sh" --bogus 2>&1 >/dev/null) || rc=$?
[ $rc -eq 2 ] || fail "bad usage exit code $rc"
[[ $err == "gpu_check: error: "* ]] || fail "bad usage message '$err'"
echo "ok: bad usage -> exit 2"
