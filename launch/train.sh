#!/usr/bin/env bash
# The quick start: installs what is missing, builds, prepares the default corpus (the King James
# Bible, 66 books as documents) and trains CONFIG (default configs/default.yaml) with live
# progress. Extra arguments go to `kvmtrain train` (e.g. --set train.steps=100); run again, it
# continues the run in its log.dir (--overwrite starts it over).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/default.yaml}"
shift || true

bash launch/setup.sh
bash launch/build.sh

if [ ! -f datasets/kjv/manifest.json ]; then
  bash launch/corpus.sh datasets/kjv_text kjv
  ./build/kvmtrain prepare --input datasets/kjv_text --output datasets/kjv --tokenizer gpt2
fi

# one OpenMP thread per core; OpenBLAS shares them
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(nproc)}"
# run again, it continues its run (a finished one ends at once) unless told --resume or --overwrite
case " $* " in
  *" --resume"* | *" --overwrite "*) exec ./build/kvmtrain train "$config" "$@" ;;
  *) exec ./build/kvmtrain train "$config" --resume auto "$@" ;;
esac
