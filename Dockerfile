# syntax=docker/dockerfile:1
# One image for every Tenure process: `tenure serve SERVICE`, `tenure worker SERVICE`, `tenure migrate`.
#   docker build -t tenure:dev .
#   docker run --rm -e TENURE_DATABASE_URL=... -e TENURE_REDIS_URL=... tenure:dev serve ingest --port 8000
# Kubernetes manifests: k8s/ (docs/operations.md). Linted by tests/k8s/test_dockerfile.py (hadolint).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- builder: a virtualenv with Tenure and its dependencies (binary wheels; no compiler needed) ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
# A regular (non-editable) install: the packages, their migrations and templates land in site-packages.
RUN pip install --no-cache-dir . \
    && python -m compileall -q /opt/venv/lib

# ---- runtime: the virtualenv on a clean slim base, as an unprivileged numeric user ----
FROM ${PYTHON_IMAGE} AS runtime

# UID/GID 10001: k8s/base sets the same runAsUser/runAsGroup.
RUN groupadd --system --gid 10001 tenure \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tenure

COPY --from=builder /opt/venv /opt/venv

# The root filesystem is read-only in Kubernetes: no bytecode writes, state (unused outside `tenure dev`)
# under /tmp, which the pod mounts as an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TENURE_HOST=0.0.0.0 \
    TENURE_STATE_DIR=/tmp/tenure

LABEL org.opencontainers.image.title="tenure" \
      org.opencontainers.image.description="Lifecycle marketing backend: ingest, segment, campaign and delivery services" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Exec form: `tenure` is PID 1 and receives SIGTERM itself (uvicorn drains, arq finishes its jobs).
ENTRYPOINT ["tenure"]
CMD ["--help"]
