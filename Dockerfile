# syntax=docker/dockerfile:1.7
#
# One image for every horde-validator service. Choose the service with the command:
#   python -m horde_scheduler | horde_job_runner | horde_weights | horde_facilitator_gateway | horde_cross_validator
#   (or `horde run <name>`), and `horde migrate` for the schema migrations.
#
# Build from the repository root:  docker build -t horde-validator:local .

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- builder: resolve the locked environment into /app/.venv --------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /usr/local/bin/

# UV_COMPILE_BYTECODE: the .pyc files ship in the image. The runtime sets PYTHONDONTWRITEBYTECODE
# (read-only, non-root), so without them every start would recompile the whole import graph
# (`horde --help` 2.5 s instead of 1.3 s).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Third-party dependencies first (only the lock and the manifests), so that code changes reuse this layer.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/pyproject.toml
COPY libs/localnet/pyproject.toml libs/localnet/pyproject.toml
COPY libs/cli/pyproject.toml libs/cli/pyproject.toml
COPY services/scheduler/pyproject.toml services/scheduler/pyproject.toml
COPY services/job-runner/pyproject.toml services/job-runner/pyproject.toml
COPY services/weights/pyproject.toml services/weights/pyproject.toml
COPY services/facilitator-gateway/pyproject.toml services/facilitator-gateway/pyproject.toml
COPY services/cross-validator/pyproject.toml services/cross-validator/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace

# Then the workspace members themselves, installed as regular (non-editable) wheels: the runtime
# stage needs only /app/.venv, not the sources.
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# --- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="horde-validator" \
      org.opencontainers.image.description="ComputeHorde (Bittensor subnet 12) validator services"

ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" horde \
 && useradd --system --uid "${UID}" --gid horde --home-dir /home/horde --create-home --shell /usr/sbin/nologin horde \
 && mkdir -p /wallets \
 && chown horde:horde /wallets

COPY --from=builder /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:${PATH} \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVICE_HOST=0.0.0.0 \
    BITTENSOR_WALLET_DIRECTORY=/wallets

WORKDIR /app
# Numeric, so that Kubernetes can verify runAsNonRoot without a runAsUser.
USER ${UID}:${GID}

# scheduler, job-runner, weights, facilitator-gateway, cross-validator
EXPOSE 8001 8002 8003 8004 8005

# Each service has its own port, so health checks live in deploy/compose.yml and the Helm chart.
CMD ["horde", "--help"]
