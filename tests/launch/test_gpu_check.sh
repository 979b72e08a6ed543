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

steps=(build ctest kvmbench gpt2 generate_eval kvm120m)
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

# --bundle here, then its unpacking on "another machine": a copy of the sources at another path.
# The built targets come from the build tree of KVM_BENCH (hard links, or copies); a CPU-only build
# has no GPU tests to pack, so the part is skipped there.
if [ $# -ge 1 ]; then
  build=$(cd "$(dirname "$1")/.." && pwd)
  targets=(kvmtrain bench/kvm_bench tests/test_backend_ops tests/test_cuda_check tests/test_cuda_kvm
           tests/test_cuda_attention_cudnn tests/test_comm_nccl tests/test_data_parallel_cuda tests/test_model_cuda
           tests/test_tensor_parallel_cuda)
  if [ ! -x "$build/tests/test_cuda_check" ]; then
    echo "ok (skipped): --bundle: $build is a CPU-only build"
    exit 0
  fi
  here=$tmp/here
  mkdir -p "$here/build-gpu/tests" "$here/build-gpu/bench"
  (cd "$root" && cp -r launch CMakeLists.txt cmake common data kernels trainer tests bench "$here/")
  for t in "${targets[@]}"; do cp -l "$build/$t" "$here/build-gpu/$t" 2>/dev/null || cp "$build/$t" "$here/build-gpu/$t"; done
  printf 'In the beginning God created the heaven and the earth.\n%.0s' {1..200} > "$tmp/corpus.txt"
  "$build/kvmtrain" prepare --input "$tmp/corpus.txt" --output "$here/build-gpu/kjv" --tokenizer byte --quiet
  echo 'CMAKE_CUDA_ARCHITECTURES:STRING=80;90' > "$here/build-gpu/CMakeCache.txt"
  echo "add_test(t \"$here/build-gpu/tests/test_cuda_check\")" > "$here/build-gpu/tests/CTestTestfile.cmake"
  out=$(cd "$here" && GPU_BUNDLE_OUT=bundle GPU_BUNDLE_PACK_ONLY=1 bash launch/gpu_check.sh --bundle) || fail "--bundle exited $?"
  grep -q "packing the targets already built" <<<"$out" || fail "--bundle rebuilt: $out"
  libs=$(ls "$here/build-gpu/bundle-lib")
  for want in libdnnl libhdf5 libyaml-cpp libmpi; do grep -q "^$want" <<<"$libs" || fail "--bundle lacks $want: $libs"; done
  for not in libc.so libstdc++ libcudart libcublas libnccl libcudnn; do
    if grep -q "^$not" <<<"$libs"; then fail "--bundle holds $not"; fi
  done
  echo "ok: --bundle: $(tail -1 <<<"$out")"

  there=$tmp/there  # another root: the bundle's paths must follow
  mv "$here" "$there"
  rm -rf "$there/build-gpu"
  out=$(cd "$there" && GPU_BUNDLE_OUT=bundle bash launch/gpu_check.sh --internal-step build) || fail "unpacking exited $?"
  grep -q "^gpu_check: unpacked bundle/build-gpu.tar.xz (built for sm 80;90" <<<"$out" || fail "not unpacked: $out"
  grep -q "\"$there/build-gpu/tests/test_cuda_check\"" "$there/build-gpu/tests/CTestTestfile.cmake" ||
    fail "the ctest file's paths were not moved: $(cat "$there/build-gpu/tests/CTestTestfile.cmake")"
  [ -f "$there/build-gpu/kjv/manifest.json" ] || fail "the bundle lacks the shards"
  resolved=$(LD_LIBRARY_PATH="$there/build-gpu/bundle-lib" ldd "$there/build-gpu/kvmtrain")
  grep -q "libdnnl[^ ]* => $there/build-gpu/bundle-lib/" <<<"$resolved" || fail "kvmtrain does not load the bundled oneDNN"
  LD_LIBRARY_PATH="$there/build-gpu/bundle-lib" "$there/build-gpu/kvmtrain" --version >/dev/null || fail "the bundled kvmtrain does not start"
  echo "ok: the bundle unpacks at another path and its kvmtrain starts on its libraries"

  echo "// changed" >> "$there/kernels/kernels.h"  # other sources: the bundle must not be used
  mkdir -p "$tmp/nocmake"  # the build from source it falls back to stops at once
  printf '#!/bin/sh\necho "fake cmake"; exit 1\n' > "$tmp/nocmake/cmake"
  chmod +x "$tmp/nocmake/cmake"
  out=$(cd "$there" && GPU_BUNDLE_OUT=bundle PATH="$tmp/nocmake:$PATH" bash launch/gpu_check.sh --internal-step build 2>&1) || true
  grep -q "was built from other sources" <<<"$out" || fail "a bundle of other sources was used: $out"
  echo "ok: a bundle of other sources is not used"
fi
