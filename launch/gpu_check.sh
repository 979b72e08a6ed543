#!/usr/bin/env bash
# The one command for a lent GPU machine: detects the GPU, builds for exactly that GPU, runs the
# GPU tests and short training/benchmark runs, each under its own time budget, and writes a JSON
# report plus one log per step.
#
#   launch/gpu_check.sh            run every step (needs a GPU; without one it stops in < 5 s)
#   launch/gpu_check.sh --plan     print the steps, their budgets and the total, then exit 0
#   launch/gpu_check.sh --dry-run  walk the steps, print what each would run, run none of them
#   launch/gpu_check.sh --bundle   here, before the GPU session: build what the steps run (sm_80 and
#                                  sm_90, or GPU_BUNDLE_ARCHS) and pack it with the shared libraries
#                                  it needs beyond glibc, libstdc++ and CUDA's into
#                                  ${GPU_BUNDLE_OUT:-gpu_bundle}/build-gpu.tar.xz. The lent machines
#                                  cannot install packages: carry gpu_bundle there, and the build step
#                                  unpacks it instead of building (when the sources are the same).
#
# Output folder: ${GPU_CHECK_OUT:-gpu_check_out} (on a lent device: GPU_CHECK_OUT=$OUT), holding
# gpu_check.json (the report) and <step>.log for each step that ran.
#
# Exit codes: 0 every step passed (or was skipped by design), 1 some step failed or timed out,
#             2 bad usage, 3 no GPU (nvidia-smi missing, failing or listing none).
set -euo pipefail

# ---- steps and their time budgets (seconds); the total must stay <= 480 (8 minutes) ----------
# kvmbench runs before the training steps: its bf16 GEMM peak is their MFU's yardstick.
STEPS=(build ctest kvmbench gpt2 generate_eval kvm120m)
# The basis of each budget, measured on the 2-core development machine (AMD EPYC, shared with
# other jobs, nice 10; nothing on a GPU could be measured there):
#  build    120: with a bundle (--bundle) an unpacking of seconds. From source: configure 7 s; TARGETS for one arch (sm_90) from an empty build-gpu/ took 277 s
#           on 2 cores, 235 CPU-s (the CUDA library 66, the rest 169), which is 15 s per core on
#           16. The Makefiles build a target only after those it links, so the floor is the
#           longest chain of slowest files: common -> config -> data (prepare.cpp) -> train ->
#           cli (cmd_eval.cpp) -> kvmtrain -> test_backend_ops (backend_ops_dense.cpp), 67 s of
#           per-file wall time there at 1.6 jobs per core, about 42 s on 16 free cores. setup.sh
#           with every package present 0.3 s, launch/corpus.sh 0.1 s, prepare of the KJV 0.3 s.
#           So about 50 s; the rest is for slower cores and setup.sh's apt installs of missing
#           packages (not measurable there).
#  ctest     90: ctest -L gpu took 8.6 s there with every GPU test skipped (test_backend_ops' CPU
#           cases); the 5 GPU test programs each start CUDA (1-2 s) and run small shapes.
#  kvmbench  60: kvm_bench stops starting a layer at a larger T once its predicted time exceeds
#           what is left of KVMBENCH_RUN_S (45 s); the rest covers CUDA and cuDNN start-up, the
#           8192^3 GEMM peak (< 1 s), the host's random inputs (805M normals at T 8192, about 1 s
#           on 16 threads) and the overrun of the last layer started.
#  gpt2      80: 10 steps of 4x1024 tokens after the start-up (CUDA, cuBLASLt plans, the GEMM peak
#           0.3 s, the KJV's unigram entropy); not measured on a GPU.
#  generate_eval 30: two start-ups (CUDA, the 124M checkpoint read, 0.5 GB), 64 tokens through
#           the decode caches and 2 batches of 4x1024 tokens; not measured on a GPU.
#  kvm120m  100: 6 steps of 1x8192 tokens (grad_accum 1, not the config's 8) through 12 KVM layers
#           (fp32 KVM kernels, recompute: block); not measured on a GPU.
declare -A BUDGET=([build]=120 [ctest]=90 [kvmbench]=60 [gpt2]=80 [generate_eval]=30 [kvm120m]=100)
declare -A TITLE=(
  [build]="unpack gpu_bundle/, or setup + configure build-gpu/ for this GPU + build targets + KJV corpus"
  [ctest]="ctest -L gpu (kernel table cuda vs cpu, model cuda, cuDNN attention, NCCL)"
  [kvmbench]="KVM prefill/backward/decode vs cuDNN and native attention (B 8, H 32, D 128), bf16 GEMM peak"
  [gpt2]="GPT-2 124M bf16 training on cuda, a few steps, and its checkpoint"
  [generate_eval]="generate and eval --device cuda on the gpt2 step's checkpoint (decode caches, loss)"
  [kvm120m]="120M paper KVM model (sqrt16 budget) bf16 on cuda, a few steps"
)
TOTAL_BUDGET=480
# a step that reads what another made runs only after that one passed (every step needs the build)
declare -A NEEDS=([generate_eval]=gpt2)

# ---- what the steps run ----------------------------------------------------------------------
BUILD_DIR=${GPU_CHECK_BUILD_DIR:-build-gpu}
# kvmtrain, every test labelled gpu (ctest counts one not built as failed) and kvm_bench: nothing else
TARGETS=(kvmtrain test_backend_ops test_cuda_check test_cuda_kvm test_cuda_attention_cudnn
         test_comm_nccl test_data_parallel_cuda test_model_cuda test_tensor_parallel_cuda kvm_bench)
BUNDLE=${GPU_BUNDLE_OUT:-gpu_bundle}/build-gpu.tar.xz
GPT2_CONFIG=configs/gpt2-124m.yaml
GPT2_STEPS=10
KVM_CONFIG=configs/paper/120M/kvm_sqrt16_wd.yaml
KVM_STEPS=6
DATA_DIR=$BUILD_DIR/kjv   # tokenized KJV shards (train/, val/)
KVMBENCH_T=1024,2048,4096,8192
KVMBENCH_RUN_S=45
KVMBENCH_JSON=$BUILD_DIR/bench/results/kvm_bench_cuda.json  # kvm_bench's default --out

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

cd "$(dirname "$0")/.."
SELF=launch/gpu_check.sh

# A digest of the sources the build reads (the tree travels to the device without .git): a bundle
# is used only where the sources are the ones it was built from.
source_digest() {
  find CMakeLists.txt cmake common data kernels trainer tests bench -type f \( -name '*.c' -o -name '*.cpp' \
    -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.in' -o -name '*.cmake' -o -name CMakeLists.txt \) |
    LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}
# The built TARGETS' files in BUILD_DIR
target_files() {
  local t
  for t in "${TARGETS[@]}"; do
    case $t in kvmtrain) echo "$BUILD_DIR/kvmtrain" ;; kvm_bench) echo "$BUILD_DIR/bench/kvm_bench" ;; *) echo "$BUILD_DIR/tests/$t" ;; esac
  done
}
# Shared libraries the binaries load that a CUDA machine without this project's packages may lack:
# all but glibc's, libstdc++/libgcc_s (the machine's are newer) and CUDA's (the machine's own).
bundled_libraries() {
  target_files | xargs ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
    grep -Ev '^(libc|libm|libpthread|libdl|librt|libresolv|libutil|ld-linux[^ ]*|libstdc\+\+|libgcc_s)\.so' |
    grep -Ev '^lib(cudart|cublas|cublasLt|cudnn[^ ]*|nccl|cuda)\.so'
}

# ---- internal: one step's body, run by the parent under `timeout` ----------------------------
if [ "${1:-}" = "--internal-step" ]; then
  step=$2
  case "$step" in
    build)
      if [ -f "$BUNDLE" ] && [ -z "${GPU_CHECK_FROM_SOURCE:-}" ]; then
        tar -xJf "$BUNDLE"  # BUILD_DIR: the binaries, CTestTestfile.cmake files, bundle-lib/, kjv/, bundle.env
        . "$BUILD_DIR/bundle.env"
        if [ "$BUNDLE_DIGEST" = "$(source_digest)" ]; then
          find "$BUILD_DIR" -name CTestTestfile.cmake -exec sed -i "s|$BUNDLE_SOURCE_ROOT|$PWD|g" {} +
          echo "gpu_check: unpacked $BUNDLE (built for sm $BUNDLE_ARCHS from sources $BUNDLE_DIGEST)"
          exit 0
        fi
        echo "gpu_check: $BUNDLE was built from other sources ($BUNDLE_DIGEST, here $(source_digest)): building"
        rm -rf "$BUILD_DIR"
      fi
      # a machine that cannot reach apt may still hold what the build needs: cmake says what is missing
      bash launch/setup.sh || echo "gpu_check: launch/setup.sh failed; building with the packages present"
      [ -x /usr/local/cuda/bin/nvcc ] && export CUDACXX=/usr/local/cuda/bin/nvcc
      cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DKVMTRAIN_CUDA=ON -DKVMTRAIN_BUILD_TESTS=ON \
        -DCMAKE_CUDA_ARCHITECTURES="$GPU_ARCH"
      cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}"
      if [ ! -f "$DATA_DIR/manifest.json" ]; then
        bash launch/corpus.sh "$BUILD_DIR/kjv_text" kjv
        "./$BUILD_DIR/kvmtrain" prepare --input "$BUILD_DIR/kjv_text" --output "$DATA_DIR" --tokenizer gpt2 --quiet
      fi ;;
    ctest)
      # without mpiexec (a bundle on a machine without Open MPI) the multi-rank tests cannot start
      exclude=()
      command -v mpiexec >/dev/null || { exclude=(-LE mpi); echo "gpu_check: no mpiexec: the mpi-labelled tests are not run"; }
      cd "$BUILD_DIR" && ctest -L gpu "${exclude[@]}" --output-on-failure ;;
    pack)
      missing=$(target_files | while read -r f; do [ -x "$f" ] || echo "$f"; done)
      [ -z "$missing" ] || { echo "gpu_check: error: --bundle: not built: $missing" >&2; exit 2; }
      rm -rf "$BUILD_DIR/bundle-lib"
      mkdir -p "$BUILD_DIR/bundle-lib" "$(dirname "$BUNDLE")"
      bundled_libraries | while read -r name path; do cp -L "$path" "$BUILD_DIR/bundle-lib/$name"; done
      archs=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
      printf 'BUNDLE_SOURCE_ROOT=%q\nBUNDLE_DIGEST=%q\nBUNDLE_ARCHS=%q\n' "$PWD" "$(source_digest)" "$archs" \
        > "$BUILD_DIR/bundle.env"
      { target_files; find "$BUILD_DIR" -name CTestTestfile.cmake; echo "$BUILD_DIR/bundle-lib";
        echo "$DATA_DIR"; echo "$BUILD_DIR/bundle.env"; } > "$BUILD_DIR/bundle.list"
      tar -cf - -T "$BUILD_DIR/bundle.list" | xz -T0 -6 > "$BUNDLE.tmp"
      mv "$BUNDLE.tmp" "$BUNDLE"
      echo "gpu_check: $BUNDLE: $(wc -l < "$BUILD_DIR/bundle.list") entries, $(ls "$BUILD_DIR/bundle-lib" | wc -l) libraries, $(( $(stat -c %s "$BUNDLE") / 1048576 )) MiB" ;;
    kvmbench)
      rm -f "$KVMBENCH_JSON"
      "./$BUILD_DIR/bench/kvm_bench" --device cuda --T "$KVMBENCH_T" --budget-s "$KVMBENCH_RUN_S" ;;
    gpt2)
      rm -rf "$BUILD_DIR/runs/gpt2"
      "./$BUILD_DIR/kvmtrain" train "$GPT2_CONFIG" --set train.device=cuda --set train.precision=bf16 \
        --set train.steps=$GPT2_STEPS --set train.warmup_steps=2 --set train.eval_every=0 --set train.eval_steps=1 \
        --set train.sample_tokens=0 --set checkpoint.every=$GPT2_STEPS --set "data.train=$DATA_DIR/train" \
        --set "data.val=$DATA_DIR/val" --set "log.dir=$BUILD_DIR/runs/gpt2" ;;
    generate_eval)
      "./$BUILD_DIR/kvmtrain" generate "$BUILD_DIR/runs/gpt2" --device cuda --n 64 --prompt "In the beginning"
      "./$BUILD_DIR/kvmtrain" eval "$BUILD_DIR/runs/gpt2" --device cuda --batches 2 --out "$BUILD_DIR/runs/gpt2/eval" ;;
    kvm120m)
      rm -rf "$BUILD_DIR/runs/kvm120m"
      "./$BUILD_DIR/kvmtrain" train "$KVM_CONFIG" --set train.device=cuda --set train.precision=bf16 \
        --set train.batch_size=1 --set train.grad_accum=1 --set train.seq_len=8192 --set train.steps=$KVM_STEPS --set train.warmup_steps=2 \
        --set train.eval_every=0 --set train.eval_steps=1 --set train.sample_tokens=0 --set checkpoint.every=0 \
        --set "data.train=$DATA_DIR/train" --set "data.val=$DATA_DIR/val" --set "log.dir=$BUILD_DIR/runs/kvm120m" ;;
    *) echo "gpu_check: error: unknown internal step '$step'" >&2; exit 2 ;;
  esac
  exit 0
fi

# ---- arguments -------------------------------------------------------------------------------
mode=run
for a in "$@"; do
  case "$a" in
    --plan) mode=plan ;;
    --dry-run) mode=dry_run ;;
    --bundle) mode=bundle ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: error: unknown argument '$a' (expected --plan, --dry-run, --bundle or --help)" >&2; exit 2 ;;
  esac
done

if [ "$mode" = bundle ]; then  # no GPU needed: builds (incrementally: the binaries must be these sources') and packs
  export GPU_ARCH=${GPU_BUNDLE_ARCHS:-80;90}
  if [ -n "${GPU_BUNDLE_PACK_ONLY:-}" ]; then  # test hook: pack the targets as they are
    echo "gpu_check: --bundle: packing the targets already built in $BUILD_DIR"
  else
    GPU_CHECK_FROM_SOURCE=1 bash "$SELF" --internal-step build
  fi
  exec bash "$SELF" --internal-step pack
fi

total=0
for s in "${STEPS[@]}"; do total=$((total + BUDGET[$s])); done

if [ "$mode" = plan ]; then
  printf '%-14s %8s  %s\n' step budget_s what
  for s in "${STEPS[@]}"; do printf '%-14s %8d  %s\n' "$s" "${BUDGET[$s]}" "${TITLE[$s]}"; done
  printf '%-14s %8d  (limit %d)\n' total "$total" "$TOTAL_BUDGET"
  exit 0
fi

OUT_DIR=${GPU_CHECK_OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/gpu_check.json
t_start=$(date +%s)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# JSON string escape (backslash, quote, control characters as spaces)
jstr() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/ }; s=${s//$'\r'/ }; printf '"%s"' "$s"; }
# a number, or null when empty/not numeric
jnum() { if [[ ${1:-} =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$1"; else printf null; fi; }

# ---- 1. GPU detection: nothing installed or built before this, < 5 s -------------------------
gpu_json=null gpu_name="" gpu_cap="" GPU_ARCH=""
if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(timeout 4 nvidia-smi -L 2>/dev/null) && grep -q '^GPU [0-9]' <<<"$gpus"; then
  gpu_count=$(grep -c '^GPU [0-9]' <<<"$gpus")
  gpu_name=$(timeout 4 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  gpu_cap=$(timeout 4 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ' || true)
  driver=$(timeout 4 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ' || true)
  mem=$(timeout 4 nvidia-smi --query-gpu=memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
  GPU_ARCH=${gpu_cap//./}
  gpu_json="{\"name\": $(jstr "$gpu_name"), \"count\": $gpu_count, \"compute_cap\": $(jstr "$gpu_cap"), \"arch\": $(jstr "$GPU_ARCH"), \"driver\": $(jstr "$driver"), \"memory\": $(jstr "$mem")}"
fi
export GPU_ARCH

write_report() {  # $1: overall status, $2: steps JSON array body
  local now; now=$(date +%s)
  printf '{\n  "status": %s,\n  "gpu": %s,\n  "started": %s,\n  "seconds": %d,\n  "total_budget_s": %d,\n  "steps": [%s\n  ]\n}\n' \
    "$(jstr "$1")" "$gpu_json" "$(jstr "$started")" $((now - t_start)) "$TOTAL_BUDGET" "${2:-}" > "$REPORT"
}

if [ "$gpu_json" = null ] && [ "$mode" = run ]; then
  write_report no_gpu ""
  echo "gpu_check: no GPU (nvidia-smi found none): nothing to check"
  exit 3
fi
if [ "$gpu_json" = null ]; then echo "gpu_check: no GPU (nvidia-smi found none); dry run only"
else echo "gpu_check: $gpu_name (compute capability $gpu_cap, sm_$GPU_ARCH)"; fi

# ---- step descriptions (what --dry-run prints) and their figure parsers ----------------------
describe() {
  case "$1" in
    build) echo "unpack $BUNDLE where it is there and built from these sources; else bash launch/setup.sh; cmake -S . -B $BUILD_DIR -DKVMTRAIN_CUDA=ON -DKVMTRAIN_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=${GPU_ARCH:-<compute_cap>}; cmake --build $BUILD_DIR -j $(nproc) --target ${TARGETS[*]}; launch/corpus.sh + kvmtrain prepare into $DATA_DIR" ;;
    ctest) echo "cd $BUILD_DIR && ctest -L gpu --output-on-failure" ;;
    gpt2) echo "$BUILD_DIR/kvmtrain train $GPT2_CONFIG --set train.device=cuda --set train.precision=bf16 --set train.steps=$GPT2_STEPS --set checkpoint.every=$GPT2_STEPS ... (log.dir $BUILD_DIR/runs/gpt2)" ;;
    generate_eval) echo "$BUILD_DIR/kvmtrain generate $BUILD_DIR/runs/gpt2 --device cuda --n 64 ...; $BUILD_DIR/kvmtrain eval $BUILD_DIR/runs/gpt2 --device cuda --batches 2" ;;
    kvm120m) echo "$BUILD_DIR/kvmtrain train $KVM_CONFIG --set train.device=cuda --set train.precision=bf16 --set train.batch_size=1 --set train.grad_accum=1 --set train.seq_len=8192 --set train.steps=$KVM_STEPS ... (log.dir $BUILD_DIR/runs/kvm120m)" ;;
    kvmbench) echo "$BUILD_DIR/bench/kvm_bench --device cuda --T $KVMBENCH_T --budget-s $KVMBENCH_RUN_S (writes $KVMBENCH_JSON)" ;;
  esac
}

# the number after "key": in file $2 (first match), or nothing
json_field() { grep -o "\"$1\": *[-0-9.eE+]*" "$2" | head -1 | sed 's/.*: *//'; }

# figures from a kvmtrain log.jsonl: steps, final loss, median tokens/s and MFU over the steps after
# the first; the trainer's GEMM peak (its last value: it is only ever raised), and the MFU against
# kvmbench's bf16 GEMM peak (mfu x peak_flops is a step's model FLOP/s)
log_figures() {
  local f=$1 n tps mfu loss peak gemm_peak mfu_gemm=""
  [ -f "$f" ] || { printf '{}'; return; }
  n=$(grep -c '"step"' "$f" || true)
  field() { grep -o "\"$1\": *[-0-9.eE+]*" "$f" | sed 's/.*: *//'; }
  med() { tail -n +2 | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
  tps=$(field tokens_per_s | med); mfu=$(field mfu | med); loss=$(field loss | tail -1); peak=$(field peak_flops | tail -1)
  gemm_peak=$( [ -f "$KVMBENCH_JSON" ] && json_field bf16_gemm_peak_flops "$KVMBENCH_JSON" || true)
  if [ -n "$gemm_peak" ]; then
    mfu_gemm=$(paste <(field mfu) <(field peak_flops) | awk -v p="$gemm_peak" '{printf "%.6g\n", $1 * $2 / p}' | med)
  fi
  printf '{"steps": %s, "final_loss": %s, "tokens_per_s": %s, "mfu": %s, "peak_flops": %s, "mfu_at_gemm_peak": %s}' \
    "$(jnum "$n")" "$(jnum "$loss")" "$(jnum "$tps")" "$(jnum "$mfu")" "$(jnum "$peak")" "$(jnum "$mfu_gemm")"
}

figures() {  # $1 step, $2 log file
  case "$1" in
    ctest)
      local line passed failed tot skipped
      line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$2" | tail -1 || true)
      failed=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
      tot=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
      skipped=$(grep -c '(Skipped)' "$2" || true)
      passed=""; [ -n "$line" ] && passed=$((tot - failed - skipped))
      printf '{"passed": %s, "failed": %s, "skipped": %s, "total": %s}' "$(jnum "$passed")" "$(jnum "$failed")" "$(jnum "$skipped")" "$(jnum "$tot")" ;;
    kvmbench)  # kvm_bench's JSON (rows of T, layer, forward/backward/decode ms; skipped; the GEMM peak), on one line
      if [ -f "$KVMBENCH_JSON" ]; then tr '\n' ' ' < "$KVMBENCH_JSON" | tr -s ' '; else printf '{}'; fi ;;
    gpt2) log_figures "$BUILD_DIR/runs/gpt2/log.jsonl" ;;
    generate_eval)  # generate's "N tokens in S s, R tokens/s" and eval's loss.json
      local tps loss=""
      tps=$(sed -n 's/^.*generate: [0-9]* tokens in [0-9.]* s, \([0-9.]*\) tokens\/s.*$/\1/p' "$2" | tail -1)
      [ -f "$BUILD_DIR/runs/gpt2/eval/loss.json" ] && loss=$(json_field loss "$BUILD_DIR/runs/gpt2/eval/loss.json")
      printf '{"generate_tokens_per_s": %s, "eval_loss": %s}' "$(jnum "$tps")" "$(jnum "$loss")" ;;
    kvm120m) log_figures "$BUILD_DIR/runs/kvm120m/log.jsonl" ;;
    *) printf '{}' ;;
  esac
}

# An unpacked bundle's binaries load its libraries, and CUDA's from wherever this machine keeps
# them: the toolkit, or the NVIDIA wheels beside PyTorch (cuDNN, NCCL).
use_bundle_libraries() {
  local dirs=$PWD/$BUILD_DIR/bundle-lib d lib site
  site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib $(for s in $site; do echo "$s"/nvidia/*/lib; done); do
    for lib in cudart cublasLt cudnn nccl; do
      if compgen -G "$d/lib$lib.so*" >/dev/null; then dirs+=:$d; break; fi
    done
  done
  export LD_LIBRARY_PATH=$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "gpu_check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

# ---- the step runner: a failing step never stops the script ----------------------------------
steps_json="" sep="" any_fail=0
declare -A RES_STATUS RES_SECS RES_FIGS
for s in "${STEPS[@]}"; do
  budget=${BUDGET[$s]} log=$OUT_DIR/$s.log cmd=$(describe "$s") note="" figs="{}" secs=0
  elapsed=$(( $(date +%s) - t_start ))
  if [ "$mode" = dry_run ]; then
    status=dry_run; echo "[$s] budget ${budget}s: would run: $cmd"
  elif [ $((elapsed + budget)) -gt "$TOTAL_BUDGET" ]; then
    status=skipped; note="skipped: ${elapsed}s elapsed leaves less than its ${budget}s budget of ${TOTAL_BUDGET}s"
  elif [ "$s" != build ] && [ "${RES_STATUS[build]:-}" != pass ]; then
    status=skipped; note="skipped: the build step did not pass"
  elif [ -n "${NEEDS[$s]:-}" ] && [ "${RES_STATUS[${NEEDS[$s]}]:-}" != pass ]; then
    status=skipped; note="skipped: the ${NEEDS[$s]} step did not pass"
  else
    echo "[$s] budget ${budget}s: $cmd"
    t0=$(date +%s)
    rc=0
    timeout -k 10 "$budget" bash "$SELF" --internal-step "$s" >"$log" 2>&1 || rc=$?
    secs=$(( $(date +%s) - t0 ))
    case $rc in
      0) status=pass ;;
      124|137) status=timeout; note="stopped at its ${budget}s budget" ;;
      *) status=fail; note="exit code $rc" ;;
    esac
    figs=$(figures "$s" "$log")
  fi
  if [ "$status" = fail ] || [ "$status" = timeout ]; then any_fail=1; fi
  RES_STATUS[$s]=$status RES_SECS[$s]=$secs RES_FIGS[$s]=$figs
  if [ "$s" = build ] && [ "$status" = pass ] && [ -d "$BUILD_DIR/bundle-lib" ]; then use_bundle_libraries; fi
  logname=null; [ -f "$log" ] && [ "$mode" = run ] && logname=$(jstr "$s.log")
  steps_json+="$sep
    {\"name\": $(jstr "$s"), \"what\": $(jstr "${TITLE[$s]}"), \"budget_s\": $budget, \"status\": $(jstr "$status"), \"seconds\": $secs, \"command\": $(jstr "$cmd"), \"log\": $logname, \"figures\": $figs, \"note\": $(jstr "$note")}"
  sep=,
  if [ "$mode" = run ]; then echo "[$s] $status in ${secs}s${note:+ ($note)}"; fi
done

if [ "$mode" = dry_run ]; then overall=dry_run; elif [ $any_fail = 1 ]; then overall=failed; else overall=passed; fi
write_report "$overall" "$steps_json"

echo
printf '%-14s %-8s %7s %8s  %s\n' step status seconds budget figures
for s in "${STEPS[@]}"; do
  printf '%-14s %-8s %7s %8s  %s\n' "$s" "${RES_STATUS[$s]}" "${RES_SECS[$s]}" "${BUDGET[$s]}" "${RES_FIGS[$s]}"
done
echo "gpu_check: $overall in $(( $(date +%s) - t_start ))s; report $REPORT"
[ "$overall" = failed ] && exit 1
exit 0
