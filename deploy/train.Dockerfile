# syntax=docker/dockerfile:1
# The train image: Keras 3 on TensorFlow 2.21 and on JAX 0.10 (KERAS_BACKEND=jax: several machines), both
# with their CUDA 12 pip packages, plus tf2onnx and onnx for
# `charlstm export`. ONNX Runtime here has no CUDA libraries (see deploy/install-train.sh): export verifies on
# the CPU provider, and fast generating belongs to the generate image. Build from the repository root:
#   docker build -f deploy/train.Dockerfile -t charlstm-train .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/work" charlstm-train \
#       train --text tinyshakespeare.txt --out runs/shakespeare

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY charlstm/ charlstm/
COPY runtime/ runtime/
COPY training/ training/
COPY export/ export/
COPY web/__init__.py web/site.py web/
COPY web/static/ web/static/
COPY deploy/install-train.sh deploy/
RUN python -m venv /opt/venv && sh deploy/install-train.sh /opt/venv/bin/python /src

FROM python:3.12-slim
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 charlstm \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin charlstm
# KERAS_HOME and MPLCONFIGDIR in /tmp: writable whatever --user the container is started with, so runs
# written to a mounted folder can belong to the host user.
ENV PATH=/opt/venv/bin:$PATH \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
# Mount the repository (or any folder holding the corpus and runs/) here.
WORKDIR /work
ENTRYPOINT ["charlstm"]
CMD ["--help"]
