# syntax=docker/dockerfile:1

# Build stage: install the package and its dependencies into a venv that the
# runtime stage copies as a whole. Every dependency ships a wheel for CPython
# 3.12 on amd64 and arm64, so no compiler is needed; should one ever be, it
# belongs here and never in the runtime stage.
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/manager

WORKDIR /src
COPY . .
# pip compiles the bytecode here, since the runtime user cannot write it.
RUN /opt/manager/bin/pip install --no-cache-dir .

# Runtime stage: the same base image, so the venv's interpreter symlinks
# resolve, plus the venv and an unprivileged user; nothing else.
FROM python:3.12-slim

LABEL org.opencontainers.image.title="productify-manager" \
      org.opencontainers.image.description="Productify control plane and trigger executor" \
      org.opencontainers.image.version="1.0.0"

# A fixed UID lets operators grant file access (a mounted config.yml) by
# number, and USER names it by number so that runtimes enforcing non-root
# (Kubernetes runAsNonRoot) can see it is not 0. --no-log-init keeps a high
# UID from bloating /var/log/faillog.
RUN groupadd --system --gid 10001 manager \
    && useradd --system --no-log-init --uid 10001 --gid manager \
        --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin manager

COPY --from=builder /opt/manager /opt/manager

# Logs are JSON lines on stdout: unbuffered, so none is lost when the
# container stops. The venv belongs to root: the daemon cannot write .pyc files.
ENV PATH="/opt/manager/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001

# 8080: API (/query, /health, /metrics). 9090: executor metrics and /health.
EXPOSE 8080 9090

# `manager healthcheck` asks the local /health on the port of the run mode,
# so the image needs no curl. The start period covers migrations at start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["manager", "healthcheck"]

ENTRYPOINT ["manager"]
CMD ["run"]
