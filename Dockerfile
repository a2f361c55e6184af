# syntax=docker/dockerfile:1
# Targets:
#   cpu    - serving image, onnxruntime           docker build --target cpu  -t qa-service:0.1.0-cpu .
#   cuda   - serving image, onnxruntime-gpu       docker build --target cuda -t qa-service:0.1.0-cuda .
#   export - offline bundle build (torch, CPU)    docker build --target export -t qa-service:0.1.0-export .
# Serving images hold only the serving deps; torch/transformers live in the export image alone.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31 wheels link CUDA 13 and cuDNN 9 (host driver >= 580); keep this in step with the wheel.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG APP_UID=10001

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# README* (a glob) so the build works before README.md exists; pyproject names it as the long description.
COPY pyproject.toml README* ./
COPY app ./app
COPY model_export ./model_export
# scripts/check_docker_install.sh runs this exact line in a clean venv in CI: keep it on one line.
# DL3013: "." is this project; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[cpu]"

FROM ${PYTHON_IMAGE} AS cpu
ARG APP_UID
# -l: no lastlog entry (a sparse file that grows with large UIDs). /models is the bundle mount point,
# owned by the app user because a new named volume takes its owner from the first image that mounts it
# and the export job must be able to write there.
RUN groupadd --gid ${APP_UID} app && \
    useradd -l --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app && \
    mkdir /models && chown ${APP_UID}:${APP_UID} /models
COPY --from=cpu-builder /opt/venv /opt/venv
# The package is installed (and byte-compiled by pip) into the venv, so only the bundle is needed here.
COPY models/default /app/models/default
WORKDIR /app
# Read-only root filesystem: no .pyc writes, logs unbuffered, anything that needs HOME writes to /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    QA_MODEL_DIR=/app/models/default \
    QA_PORT=8000
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# No curl in the image; urlopen raises on 503 (draining, stalled) and on "connection refused": the port opens
# only once the model is loaded and warmed up, so the start period must cover the model load.
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('QA_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------- cuda
# The CUDA images ship no Python 3.11; uv installs a relocatable CPython build at a fixed path
# that the runtime stage copies together with the venv that points at it.
FROM ${CUDA_IMAGE} AS cuda-builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN uv python install 3.11 && uv venv --seed --python 3.11 /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README* ./
COPY app ./app
COPY model_export ./model_export
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]"

FROM ${CUDA_IMAGE} AS cuda
ARG APP_UID
RUN groupadd --gid ${APP_UID} app && \
    useradd -l --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app && \
    mkdir /models && chown ${APP_UID}:${APP_UID} /models
COPY --from=cuda-builder /opt/python /opt/python
COPY --from=cuda-builder /opt/venv /opt/venv
COPY models/default /app/models/default
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    QA_MODEL_DIR=/app/models/default \
    QA_PORT=8000
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('QA_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------- export
FROM ${PYTHON_IMAGE} AS export-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README* ./
COPY app ./app
COPY model_export ./model_export
# The CPU torch index: PyPI's default Linux torch wheel drags in gigabytes of CUDA libraries.
# cpu = onnxruntime, which the export uses to check the ONNX model against torch.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu,export]"

FROM ${PYTHON_IMAGE} AS export
ARG APP_UID
RUN groupadd --gid ${APP_UID} app && \
    useradd -l --uid ${APP_UID} --gid ${APP_UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app && \
    mkdir /models /cache && chown ${APP_UID}:${APP_UID} /models /cache
COPY --from=export-builder /opt/venv /opt/venv
# /models: bundles out (a fresh named volume takes this directory's owner, so the job can write it);
# /cache: Hugging Face downloads; /work/configs: mounted configs.
WORKDIR /work
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/cache/huggingface
USER ${APP_UID}:${APP_UID}
CMD ["python", "-m", "model_export", "--help"]
