# syntax=docker/dockerfile:1
# The generate image: `charlstm generate` and `charlstm serve` on ONNX Runtime (CUDA 13 from pip, else the CPU).
# No TensorFlow, no compilers, no pip cache. Build from the repository root:
#   docker build -f deploy/generate.Dockerfile -t charlstm-generate .
#   docker run --rm --gpus all charlstm-generate --prompt "ROMEO:" --length 300
#   docker run --rm --gpus all -p 8000:8000 charlstm-generate serve

# Stage 1: fill a virtual environment. The steps live in deploy/install-generate.sh, which
# tests/test_deploy.py runs as they are, so the recipe is tested without a Docker engine.
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
# The default model ships inside the package (pyproject's package data): `charlstm generate` needs no --model.
COPY models/shakespeare/ models/shakespeare/
COPY deploy/install-generate.sh deploy/
RUN python -m venv /opt/venv && sh deploy/install-generate.sh /opt/venv/bin/python /src

# Stage 2: the same slim base with only the environment (the default model inside it); the source stays behind.
# The venv's python links to /usr/local/bin/python3.12, which is the same in both stages.
FROM python:3.12-slim
COPY --from=build /opt/venv /opt/venv
COPY deploy/entrypoint.sh /usr/local/bin/charlstm-entrypoint
COPY deploy/healthcheck.py /usr/local/lib/charlstm-healthcheck.py
# A system user with no login shell and no home: generating writes nothing to disk.
RUN groupadd --system --gid 10001 charlstm \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin charlstm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHARLSTM_HOST=0.0.0.0 \
    CHARLSTM_PORT=8000
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# Healthy once `serve` answers /healthz; a one-shot generate exits before the first check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/charlstm-healthcheck.py"]
# Any `charlstm generate` option can follow `docker run IMAGE`, or `serve` and its options; --model DIR (mounted)
# overrides the default model.
ENTRYPOINT ["sh", "/usr/local/bin/charlstm-entrypoint"]
