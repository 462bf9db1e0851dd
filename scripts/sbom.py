#!/usr/bin/env python3
"""Writes the CycloneDX SBOM of the image's Python packages (docs/operations.md, "The image").

    python sbom.py --lock requirements/image.lock --report install-report.json \\
        --wheel dist/retention-0.1.0-py3-none-any.whl --output sbom.cdx.json

The packages, their versions and who requires whom come from the lock file (uv's `# via`
comments); the SHA-256 of each wheel actually installed comes from pip's installation report
(`pip install --report`) and must be one of the lock's hashes; the document's subject is
retention's own wheel. An install that differs from the lock in any package, version or hash
is refused (exit 1): the SBOM then lists exactly what the lock says and the image holds.

Standard library only: the Dockerfile runs it with the base image's Python. The output is
reproducible (no timestamp; the serial number is derived from the content).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import uuid
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

SPEC_VERSION = "1.6"
# `retention (pyproject.toml)`: uv names the project whose dependencies are locked so.
_VIA_PROJECT = re.compile(r"^(?P<name>\S+) \(pyproject\.toml\)$")
_PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)$")


class SbomError(Exception):
    pass


def normalize(name: str) -> str:
    """PEP 503: the name pip, PyPI and package URLs compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    hashes: frozenset[str]  # SHA-256 hex digests of the files the lock admits
    required_by: frozenset[str]  # normalized names; the project itself among them


def read_lock(path: Path) -> dict[str, Locked]:
    """The lock's packages by normalized name. Only what `scripts/lock.sh` writes is read:
    a requirement with anything but `==` and hashes (a marker, a URL) is an error."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    packages: dict[str, dict] = {}
    current: dict | None = None
    in_via = False
    for line in logical:
        if not line:
            continue
        if line.startswith("#"):
            text = line[1:].strip()
            if current is not None and (text == "via" or text.startswith("via ")):
                in_via = text == "via"
                if not in_via:
                    current["required_by"].add(text[len("via "):].strip())
            elif current is not None and in_via and text:
                current["required_by"].add(text)
            else:
                in_via = False
            continue
        in_via = False
        if line.startswith("-"):  # an option line, such as --only-binary :all:
            current = None
            continue
        requirement, *options = line.split()
        pinned = _PINNED.match(requirement)
        hashes = {o.removeprefix("--hash=sha256:") for o in options
                  if o.startswith("--hash=sha256:")}
        if pinned is None or not hashes or len(hashes) != len(options):
            raise SbomError(f"{path}: not a hashed pin: {line[:120]}")
        name = normalize(pinned["name"])
        current = {"name": name, "version": pinned["version"], "hashes": hashes,
                   "required_by": set()}
        packages[name] = current
    locked = {}
    for name, p in packages.items():
        required_by = set()
        for parent in p["required_by"]:
            project = _VIA_PROJECT.match(parent)
            required_by.add(normalize(project["name"] if project else parent))
        locked[name] = Locked(name=name, version=p["version"], hashes=frozenset(p["hashes"]),
                              required_by=frozenset(required_by))
    if not locked:
        raise SbomError(f"{path}: no packages")
    return locked


def installed_wheels(report_path: Path, lock: dict[str, Locked]) -> dict[str, str]:
    """name -> SHA-256 of the wheel pip installed, from its installation report, checked
    against the lock: the same packages, the same versions, a file the lock admits."""
    report = json.loads(report_path.read_text())
    installed: dict[str, str] = {}
    problems = []
    for item in report.get("install", []):
        name = normalize(item["metadata"]["name"])
        version = item["metadata"]["version"]
        sha256 = item.get("download_info", {}).get("archive_info", {}).get("hashes", {}) \
            .get("sha256")
        locked = lock.get(name)
        if locked is None:
            problems.append(f"{name} {version} installed but not in the lock")
        elif version != locked.version:
            problems.append(f"{name} {version} installed, the lock pins {locked.version}")
        elif sha256 not in locked.hashes:
            problems.append(f"{name} {version}: the installed file's SHA-256 ({sha256}) is "
                            "not one of the lock's")
        installed[name] = sha256
    problems += [f"{name} {lock[name].version} in the lock but not installed"
                 for name in sorted(lock.keys() - installed.keys())]
    if problems:
        raise SbomError(f"{report_path}: the install differs from the lock: "
                        + "; ".join(problems))
    return installed


def wheel_identity(wheel: Path) -> tuple[str, str, str]:
    """(name, version, SHA-256) of a wheel, from its own METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = [n for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(metadata) != 1:
            raise SbomError(f"{wheel}: not a wheel (no single .dist-info/METADATA)")
        headers = HeaderParser().parsestr(archive.read(metadata[0]).decode())
    return headers["Name"], headers["Version"], hashlib.sha256(wheel.read_bytes()).hexdigest()


def purl(name: str, version: str) -> str:
    return f"pkg:pypi/{normalize(name)}@{version}"


def sbom(lock: dict[str, Locked], installed: dict[str, str], wheel: Path) -> dict:
    project, project_version, project_sha256 = wheel_identity(wheel)
    root = purl(project, project_version)
    refs = {name: purl(name, p.version) for name, p in lock.items()}
    depends: dict[str, set[str]] = {root: set(), **{ref: set() for ref in refs.values()}}
    for name, p in lock.items():
        for parent in p.required_by:
            parent_ref = root if parent == normalize(project) else refs.get(parent)
            if parent_ref is None:
                raise SbomError(f"the lock says {parent} requires {name}, and {parent} "
                                "is neither locked nor the project")
            depends[parent_ref].add(refs[name])
    document = {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "tools": {"components": [{
                "type": "application", "name": "sbom.py",
                "description": "retention's scripts/sbom.py: the lock file and pip's "
                               "installation report",
            }]},
            "component": {
                "type": "application", "bom-ref": root, "name": project,
                "version": project_version, "purl": root,
                "hashes": [{"alg": "SHA-256", "content": project_sha256}],
            },
        },
        "components": [
            {"type": "library", "bom-ref": refs[name], "name": name, "version": p.version,
             "purl": refs[name], "hashes": [{"alg": "SHA-256", "content": installed[name]}]}
            for name, p in sorted(lock.items())
        ],
        "dependencies": [{"ref": ref, "dependsOn": sorted(children)}
                         for ref, children in sorted(depends.items())],
    }
    content = json.dumps(document, sort_keys=True).encode()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "sha256:" + hashlib.sha256(content).hexdigest())
    return {**document, "serialNumber": f"urn:uuid:{serial}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True,
                        help="pip install --report of the install from the lock")
    parser.add_argument("--wheel", type=Path, required=True, help="retention's own wheel")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        lock = read_lock(args.lock)
        document = sbom(lock, installed_wheels(args.report, lock), args.wheel)
    except KeyError as error:
        print(f"sbom: {args.report}: not a pip installation report (no {error})",
              file=sys.stderr)
        return 1
    except (SbomError, OSError, ValueError, zipfile.BadZipFile) as error:
        print(f"sbom: {error}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
