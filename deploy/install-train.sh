#!/bin/sh
# The train image's install steps (deploy/train.Dockerfile), kept in a script like deploy/install-generate.sh
# so they can be run, and measured (deploy/measure-sizes.sh), without a Docker engine.
#
#   deploy/install-train.sh [--no-cuda-libs] TARGET_PYTHON [SOURCE]
#
# --no-cuda-libs: plain tensorflow and jax instead of tensorflow[and-cuda] and jax[cuda12] (no pip-packaged
# CUDA 12 libraries).
set -eu

# TensorFlow 2.21 is built for CUDA 12; [and-cuda] brings the matching NVIDIA pip packages. ONNX Runtime 1.27+
# is built for CUDA 13, which is why generating has an image of its own. Here onnxruntime-gpu (a base
# dependency) comes without its [cuda,cudnn] extra, so no CUDA 13 libraries are installed beside TensorFlow's:
# export verification runs on ONNX Runtime's CPU provider and needs none.
# JAX trains on several machines (KERAS_BACKEND=jax, docs/training.md); its CUDA 12 plugin takes the same
# nvidia-*-cu12 packages as TensorFlow's [and-cuda], whose version ranges overlap.
TF_VERSION="==2.21.*"
JAX_VERSION="==0.10.*"
cuda_extra="[and-cuda]"
jax_extra="[cuda12]"
if [ "${1:-}" = "--no-cuda-libs" ]; then
    cuda_extra=""
    jax_extra=""
    shift
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 [--no-cuda-libs] TARGET_PYTHON [SOURCE]" >&2
    exit 2
fi
python=$1
source=${2:-.}

"$python" -m pip install --no-cache-dir --disable-pip-version-check \
    "${source}[train,export]" "tensorflow${cuda_extra}${TF_VERSION}" "jax${jax_extra}${JAX_VERSION}"
"$python" -m charlstm --help >/dev/null
KERAS_BACKEND=jax "$python" -c "import keras, jax; assert keras.backend.backend() == 'jax'"
