#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU and onnxruntime-gpu (no TensorFlow needed):
#   1. `charlstm generate --device cuda --verbose` on a shipped model (the CUDA success path), as text and --json;
#   2. `--device auto` takes CUDA;
#   3. the GPU table (python benchmarks/bench.py --device cuda) on the notebook-size model ($GPU_BENCH_ARGS,
#      default --steps 2000 --repeats 7).
# Usage, from the repository root: bash benchmarks/gpu_check.sh [MODEL_DIR] [BENCH_MODEL_DIR]
# (BENCH_MODEL_DIR: built by `python benchmarks/bench.py` where TensorFlow is, in ~/.cache/charlstm/bench.) Each
# part runs even when an earlier one fails; the exit status is the number of parts that failed.
set -u
model=${1:-models/shakespeare}
bench=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/charlstm/bench/random-v92-e256-u1024-l1/model}
failed=0
py=${PYTHON:-python3}
part() { echo "== $*" >&2; "$@" || { echo "== FAILED ($?): $*" >&2; failed=$((failed + 1)); }; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
"$py" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" >&2
part "$py" -m charlstm generate --model "$model" --device cuda --verbose --prompt "ROMEO:" --length 300 --seed 1
part "$py" -m charlstm generate --model "$model" --device cuda --json --prompt "ROMEO:" --length 300 --seed 1 \
  --num-samples 2
part "$py" -m charlstm generate --model "$model" --device cuda --top-k 5 --prompt "ROMEO:" --length 100 --seed 1
part "$py" -m charlstm generate --model "$model" --device auto --verbose --prompt "ROMEO:" --length 100 --seed 1
# shellcheck disable=SC2086 # the arguments are meant to split
part "$py" benchmarks/bench.py --device cuda --model "$bench" ${GPU_BENCH_ARGS:---steps 2000 --repeats 7}
exit $failed
