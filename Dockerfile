# syntax=docker/dockerfile:1
#
# kwarp images, one target per role:
#
#   docker build --target operator -t kwarp-operator:0.1.0 .   # the kopf operator (no torch)
#   docker build --target worker   -t kwarp-worker:0.1.0 .     # trainer, merger, evaluation (CUDA torch)
#
# Both run `kwarp` as their entrypoint, as the non-root user 1000, with HOME and the checkpoint
# cache on /scratch (the pods mount an emptyDir there; the root filesystem is read-only).
# Both install through the locks in requirements/ (`make lock`): the images run the versions the
# tests ran, and a rebuild next month installs the same ones.
# For a CPU-only cluster (kind, CI), build a small worker with
#   --build-arg WORKER_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pin the base image by digest in your own builds with --build-arg PYTHON_IMAGE=python:...@sha256:...

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG KWARP_VERSION=0.1.0
# The torch release of requirements/torch.in (a test keeps them equal).
ARG TORCH_VERSION=2.13.0
# Empty: torch from PyPI, whose Linux wheels are CUDA builds that bring the CUDA runtime as pip
# packages (pinned in requirements/worker.txt); only the NVIDIA driver comes from the node. An index
# such as https://download.pytorch.org/whl/cpu adds its builds of torch (a CPU worker).
ARG WORKER_TORCH_INDEX=

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

# ---------------------------------------------------------------- operator: kopf, no torch
FROM runtime AS operator
ARG KWARP_VERSION
LABEL org.opencontainers.image.title="kwarp-operator" \
      org.opencontainers.image.description="kwarp operator: reconciles WarpRuns into trainer, merger and evaluation Jobs"
# Exactly the operator's lock (kwarp's torch-free core, kopf, the Kubernetes client), then the kwarp
# wheel without dependencies. The wheel and the lock are bind-mounted, so neither becomes a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements,target=/requirements \
    pip install --no-cache-dir -r /requirements/operator.txt \
    && pip install --no-cache-dir --no-deps "/wheels/kwarp-${KWARP_VERSION}-py3-none-any.whl"
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
LABEL org.opencontainers.image.title="kwarp-worker" \
      org.opencontainers.image.description="kwarp worker: WARP trainer, SLERP/LiTI merger and evaluation (CUDA torch)"
# The NVIDIA container runtime exposes only what is asked for: compute (CUDA) and utility (nvidia-smi).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
# torch first (a CUDA build from PyPI, or the build of WORKER_TORCH_INDEX), then kwarp[worker]; the
# worker lock constrains every package either step installs, CUDA runtime wheels included.
# DL3013 cannot see the pins: they are in the lock given with -c.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements,target=/requirements \
    pip install --no-cache-dir -c /requirements/worker.txt \
       ${WORKER_TORCH_INDEX:+--extra-index-url "${WORKER_TORCH_INDEX}"} "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -c /requirements/worker.txt "/wheels/kwarp-${KWARP_VERSION}-py3-none-any.whl[worker]"
USER 1000:1000
ENTRYPOINT ["kwarp"]
CMD ["--help"]
