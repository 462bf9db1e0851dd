#!/usr/bin/env bash
# Refreshes the lock files the image is built from (docs/operations.md, "The image"):
#   requirements/image.lock  what the image's venv holds: the runtime dependencies and the
#                            [azure] extra, every file's SHA-256, wheels only
#   requirements/build.lock  what builds retention's own wheel (pyproject's build-system)
# Both are resolved by uv for CPython 3.11 on glibc 2.36 (the base image: Debian bookworm),
# once for linux/amd64 and once for linux/arm64; the two resolutions must agree, so one lock
# serves both images (its hashes cover every wheel of each pinned version).
#
#   scripts/lock.sh                          keep the current pins, add what pyproject added
#   scripts/lock.sh --upgrade                the newest versions pyproject allows
#   scripts/lock.sh --upgrade-package NAME   one package
#
# uv comes from the [test] extra (./scripts/setup.sh installs it); it reads PyPI itself.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || { echo "lock: $UV is missing: run ./scripts/setup.sh" >&2; exit 2; }
PYTHON=${PYTHON:-.venv/bin/python}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# compile OUT ARGS...: one resolution, starting from the current lock's pins (uv prefers the
# versions already in its output file).
compile() {
  local out=$1 platform=$2
  shift 2
  [ ! -f "requirements/$out" ] || cp "requirements/$out" "$work/$platform-$out"
  "$UV" pip compile --quiet --python-version 3.11 --python-platform "$platform-manylinux_2_36" \
    --only-binary :all: --emit-build-options --generate-hashes \
    --custom-compile-command scripts/lock.sh --output-file "$work/$platform-$out" "$@"
}

"$PYTHON" -c 'import tomllib; print("\n".join(
    tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  >"$work/build-requires.txt"

for platform in x86_64 aarch64; do
  compile image.lock "$platform" pyproject.toml --extra azure "$@"
  compile build.lock "$platform" "$work/build-requires.txt" "$@"
done

mkdir -p requirements
for out in image.lock build.lock; do
  if ! diff -u "$work/x86_64-$out" "$work/aarch64-$out" >&2; then
    echo "lock: $out resolves differently for amd64 and arm64 (above): one lock cannot" \
         "serve both images; pin the package that differs in pyproject.toml" >&2
    exit 1
  fi
  # The input file's temporary name leaks into uv's "via" comments of build.lock.
  sed "s|-r $work/build-requires.txt|pyproject.toml [build-system]|" "$work/x86_64-$out" \
    >"requirements/$out"
done
echo "lock: requirements/image.lock and requirements/build.lock written"
