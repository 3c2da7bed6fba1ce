# syntax=docker/dockerfile:1
#
# kwarp images, one target per role:
#
#   docker build --target operator -t kwarp-operator:0.1.0 .   # the kopf operator (CPU torch)
#   docker build --target worker   -t kwarp-worker:0.1.0 .     # trainer, merger, evaluation (CUDA torch)
#
# Both run `kwarp` as their entrypoint, as the non-root user 1000, with HOME and the checkpoint
# cache on /scratch (the pods mount an emptyDir there; the root filesystem is read-only).
# For a CPU-only cluster (kind, CI), build a small worker with
#   --build-arg WORKER_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pin the base image by digest in your own builds with --build-arg PYTHON_IMAGE=python:...@sha256:...

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG KWARP_VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
# The operator only needs torch because kwarp.core.checkpoints imports it: the CPU build is enough.
ARG OPERATOR_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# PyPI's Linux torch wheels are CUDA builds that bring the CUDA runtime as pip packages: only the
# NVIDIA driver comes from the node.
ARG WORKER_TORCH_INDEX=https://pypi.org/simple
# kwarp's direct dependencies at the versions the test suite runs with.
ARG RUNTIME_PINS="transformers==5.24.0 accelerate==1.15.0 safetensors==0.8.0 tokenizers==0.23.3 huggingface-hub==2.4.0 pydantic==2.14.4 pyyaml==6.0.4 rich==15.0.0 matplotlib==3.11.2 numpy==2.4.6 prometheus-client==0.26.0 minio==7.2.20"
ARG OPERATOR_PINS="kopf==1.45.2 kubernetes==36.0.3"

# ---------------------------------------------------------------- builder: the kwarp wheel
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
RUN pip install --no-cache-dir setuptools==80.9.0 wheel==0.45.1
COPY pyproject.toml README.md ./
COPY kwarp/ kwarp/
COPY operator/ operator/
COPY trainer/ trainer/
COPY merger/ merger/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime: what both roles share
FROM ${PYTHON_IMAGE} AS runtime
ARG KWARP_VERSION
LABEL org.opencontainers.image.version="${KWARP_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="kwarp" \
      org.opencontainers.image.documentation="docs/cluster.md"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/scratch \
    KWARP_CACHE=/scratch/cache
RUN groupadd --system --gid 1000 kwarp \
    && useradd --system --uid 1000 --gid kwarp --home-dir /scratch --no-create-home \
       --shell /usr/sbin/nologin kwarp \
    && install -d -o kwarp -g kwarp -m 0755 /scratch /scratch/cache
WORKDIR /scratch

# ---------------------------------------------------------------- operator: kopf, CPU torch
FROM runtime AS operator
ARG KWARP_VERSION
ARG TORCH_VERSION
ARG OPERATOR_TORCH_INDEX
ARG RUNTIME_PINS
ARG OPERATOR_PINS
LABEL org.opencontainers.image.title="kwarp-operator" \
      org.opencontainers.image.description="kwarp operator: reconciles WarpRuns into trainer, merger and evaluation Jobs"
# The wheel is bind-mounted from the builder, so it never becomes a layer of this image.
# DL3013 cannot see the pins: the wheel's file name carries its version and the *_PINS args hold
# `name==version` requirements.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --index-url "${OPERATOR_TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "/wheels/kwarp-${KWARP_VERSION}-py3-none-any.whl[operator]" \
       ${RUNTIME_PINS} ${OPERATOR_PINS}
USER 1000:1000
# metrics, liveness (the chart's defaults)
EXPOSE 8080 8081
ENTRYPOINT ["kwarp"]
CMD ["operator", "--all-namespaces"]

# ---------------------------------------------------------------- worker: trainer, merger, eval
FROM runtime AS worker
ARG KWARP_VERSION
ARG TORCH_VERSION
ARG WORKER_TORCH_INDEX
ARG RUNTIME_PINS
LABEL org.opencontainers.image.title="kwarp-worker" \
      org.opencontainers.image.description="kwarp worker: WARP trainer, SLERP/LiTI merger and evaluation (CUDA torch)"
# The NVIDIA container runtime exposes only what is asked for: compute (CUDA) and utility (nvidia-smi).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
# DL3013: as in the operator stage.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --index-url "${WORKER_TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "/wheels/kwarp-${KWARP_VERSION}-py3-none-any.whl" ${RUNTIME_PINS}
USER 1000:1000
ENTRYPOINT ["kwarp"]
CMD ["--help"]
