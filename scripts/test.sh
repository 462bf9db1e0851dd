#!/usr/bin/env bash
# Runs the whole test suite (installing what it needs first) and the linters.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
# Branch coverage of the package (modules at 100% are not listed): docs/testing.md.
exec .venv/bin/python -m pytest --cov=retention --cov-branch --cov-report=term:skip-covered "$@"
