#!/bin/sh
# Installed size of the generate environment against the train one, each made by its image's own install
# script in a fresh virtual environment (no Docker engine needed). Prints a Markdown table in MB.
#
#   deploy/measure-sizes.sh [--work DIR] [ENVIRONMENT ...]
#
# ENVIRONMENT (default: generate train):
#   generate        the project + onnxruntime-gpu, without its [cuda,cudnn] extra
#   generate-cuda   what the generate image installs: with [cuda,cudnn] (CUDA 13 and cuDNN wheels, large)
#   train           the project's [train,export] extras + tensorflow and jax, without their CUDA wheels
#   train-cuda      what the train image installs: tensorflow[and-cuda], jax[cuda12] (CUDA 12 wheels, several GB)
# --work DIR (default: a new temporary folder) is kept so the environments can be inspected; delete it after.
set -eu

work=""
if [ "${1:-}" = "--work" ]; then
    work=$2
    shift 2
fi
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/charlstm-sizes.XXXXXX")
[ $# -gt 0 ] || set -- generate train
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
rm -rf "$work/src" && mkdir -p "$work/src"

# Install from a copy, so the builds do not write build/ or *.egg-info into the working tree.
for f in pyproject.toml README.md LICENSE; do
    if [ -f "$repo/$f" ]; then cp "$repo/$f" "$work/src/"; fi
done
for d in charlstm runtime training export; do
    cp -R "$repo/$d" "$work/src/"
done
mkdir -p "$work/src/web" && cp "$repo/web/"*.py "$repo/web/"*.json "$work/src/web/" && cp -R "$repo/web/static" "$work/src/web/"
mkdir -p "$work/src/models" && cp -R "$repo/models/shakespeare" "$work/src/models/"  # the packaged default model
if [ ! -f "$work/src/README.md" ]; then
    echo "charlstm" > "$work/src/README.md"  # pyproject's readme; only its presence matters to the build
fi

mb() { du -sm "$1" | cut -f1; }

"$python" -m venv --clear "$work/empty"
empty=$(mb "$work/empty")

measure() {  # NAME SCRIPT [FLAG]
    name=$1
    script=$2
    shift 2
    "$python" -m venv --clear "$work/$name"
    echo "installing $name ..." >&2
    sh "$repo/deploy/$script" "$@" "$work/$name/bin/python" "$work/src" >"$work/$name.log" 2>&1 \
        || { echo "$script failed: see $work/$name.log" >&2; exit 1; }
    size=$(mb "$work/$name")
    packages=$("$work/$name/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l)
    echo "| $name | $script${*:+ $*} | $size | $((size - empty)) | $packages |"
}

echo "Python: $("$python" --version 2>&1); platform: $(uname -m); work folder: $work" >&2
echo "| environment | install | venv MB | over an empty venv MB | packages |"
echo "| --- | --- | ---: | ---: | ---: |"
for name in "$@"; do
    case $name in
        generate) measure generate install-generate.sh --no-cuda-libs ;;
        generate-cuda) measure generate-cuda install-generate.sh ;;
        train) measure train install-train.sh --no-cuda-libs ;;
        train-cuda) measure train-cuda install-train.sh ;;
        *) echo "unknown environment $name: use generate, generate-cuda, train or train-cuda" >&2; exit 2 ;;
    esac
done
