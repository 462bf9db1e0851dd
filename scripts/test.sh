#!/usr/bin/env bash
# Runs the whole test suite (installing what it needs first) and the linters.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
