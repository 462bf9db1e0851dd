# retention: keeps container registries at a sane size.
# Build: docker build -t retention .   Run: see docs/operations.md and helm/retention.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retention ./retention
# The same install the README describes (pip install .), into a venv copied whole below.
RUN python -m venv /opt/retention \
    && /opt/retention/bin/pip install --no-cache-dir . \
    && /opt/retention/bin/retention --version

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="retention" \
      org.opencontainers.image.description="Keeps container registries at a sane size: YAML retention policies, safe deletion by digest, Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin retention
COPY --from=build /opt/retention /opt/retention
# Read-only root filesystem: no bytecode is written; the state lives on a volume.
ENV PATH="/opt/retention/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["retention"]
CMD ["serve", "--config", "/etc/retention/retention.yaml"]
