#!/bin/sh
# The generate image's install steps, kept out of the Dockerfile so tests/test_deploy.py can run the very same
# steps in a fresh virtual environment without a Docker engine.
#
#   deploy/install-generate.sh [--no-cuda-libs] TARGET_PYTHON [SOURCE]
#
# TARGET_PYTHON: the interpreter of the environment to fill (the image's /opt/venv/bin/python).
# SOURCE: the project to install, a folder with pyproject.toml (default: the current folder).
# --no-cuda-libs: leave out onnxruntime-gpu's [cuda,cudnn] extra (the pip-packaged CUDA 13 runtime and cuDNN,
#   a large download); only the test uses it, to keep CI downloads small. Everything else is the same.
set -eu

# onnxruntime-gpu 1.27 and later is built for CUDA 13; its [cuda,cudnn] extra brings the matching NVIDIA pip
# packages, so the image needs no CUDA base image, only the host's driver (docker run --gpus all).
ORT_VERSION="==1.31.*"
cuda_extra="[cuda,cudnn]"
if [ "${1:-}" = "--no-cuda-libs" ]; then
    cuda_extra=""
    shift
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 [--no-cuda-libs] TARGET_PYTHON [SOURCE]" >&2
    exit 2
fi
python=$1
source=${2:-.}

# The project with the serve extra only: numpy, typer, rich, onnxruntime-gpu, starlette, uvicorn,
# prometheus-client; never TensorFlow. --no-cache-dir: no pip cache in the image layer.
"$python" -m pip install --no-cache-dir --disable-pip-version-check \
    "${source}[serve]" "onnxruntime-gpu${cuda_extra}${ORT_VERSION}"

# Fail the build, not the first user, if a dependency ever drags in TensorFlow or Keras.
"$python" - <<'PY'
import importlib.util, sys
found = [m for m in ("tensorflow", "keras", "tf_keras") if importlib.util.find_spec(m)]
if found:
    sys.exit(f"the generate environment must not hold {found}: check the project's base dependencies")
PY
"$python" -m charlstm --help >/dev/null
