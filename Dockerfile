# retention: keeps container registries at a sane size.
# Build: docker build -t retention .   Run: see docs/operations.md and helm/retention.
# What the image holds and how to audit it: docs/operations.md, "The image".
#
# Base image: python:3.11-slim-bookworm (Python 3.11.16, Debian 12), pinned by the digest of
# its multi-platform index, so linux/amd64 and linux/arm64 builds each get their own image of
# the same release. The digest is the one docker-library/repo-info records for that tag
# (repos/python/remote/3.11-slim-bookworm.md at commit bc9bbb47fc70, images built 2026-08-25).
# Renovate or Dependabot (docker ecosystem) should keep the digest current; change both
# FROM lines together.

FROM python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02 AS build
WORKDIR /src
# Every package comes from a lock file with hashes (scripts/lock.sh writes them), as a wheel:
# setuptools to build retention's wheel, in a venv of its own; the image's packages into
# /opt/retention, a venv made without pip or setuptools, by the build venv's pip.
COPY requirements/build.lock requirements/image.lock requirements/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: \
       -r requirements/build.lock \
    && python -m venv --without-pip /opt/retention \
    && /opt/build/bin/pip --python /opt/retention/bin/python install --no-cache-dir \
       --require-hashes --no-deps --only-binary :all: --report /tmp/install-report.json \
       -r requirements/image.lock
COPY pyproject.toml README.md ./
COPY retention ./retention
COPY scripts/sbom.py /tmp/sbom.py
# retention itself, without dependencies (the lock has them all; pip check says so), then the
# SBOM of what the venv holds: the lock's packages, checked against pip's report of the
# wheels it installed.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
       --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/retention/bin/python install --no-cache-dir --no-deps \
       /tmp/dist/retention-*.whl \
    && /opt/build/bin/pip --python /opt/retention/bin/python check \
    && /opt/retention/bin/retention --version \
    && python /tmp/sbom.py --lock requirements/image.lock --report /tmp/install-report.json \
       --wheel /tmp/dist/retention-*.whl --output /opt/sbom/sbom.cdx.json

FROM python:3.11-slim-bookworm@sha256:fe556eaffd0d96abd8685b83bb8a69addd0dc730fa193669a7df0d49ddcfac02
LABEL org.opencontainers.image.title="retention" \
      org.opencontainers.image.description="Keeps container registries at a sane size: YAML retention policies, safe deletion by digest, Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Nothing installs packages at run time: the base image's pip, setuptools, wheel and
# packaging (wheel's) go, and ensurepip with the copies it bundles (setuptools 65 among them,
# CVE-2024-6345). The build stops if the base's Python still has any package, so the Python
# packages in the image are exactly those the SBOM lists.
RUN python -m pip uninstall --yes --no-input setuptools wheel packaging pip \
    && rm -rf /usr/local/bin/pip /usr/local/lib/python3.11/ensurepip \
    && python -I -c 'import importlib.metadata as m, sys; left = sorted(d.metadata["Name"] for d in m.distributions()); sys.exit(f"packages left beside the venv: {left}" if left else 0)' \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin retention
COPY --from=build /opt/retention /opt/retention
COPY --from=build /opt/sbom/sbom.cdx.json /usr/share/doc/retention/sbom.cdx.json
# Read-only root filesystem: no bytecode is written; the state lives on a volume.
ENV PATH="/opt/retention/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["retention"]
CMD ["serve", "--config", "/etc/retention/retention.yaml"]
