#!/usr/bin/env bash
# The demo: installs what is needed, starts a local registry, seeds it, and runs retention.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py
