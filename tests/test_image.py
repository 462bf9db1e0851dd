"""The image a platform team can audit (issue 26): the Dockerfile installs exactly the lock
file (hashed wheels; a venv without pip or setuptools) on a base pinned by digest, and ships
a CycloneDX SBOM that lists exactly the lock's packages.

There is no Docker daemon here: the build stage is run instruction by instruction in a
scratch root (its absolute paths moved under it), with this machine's Python 3.11 in the
base image's place; what the final stage does is read from the Dockerfile. pip installs
from the lock for this machine's platform, from PyPI (or the machine's mirror)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import retention

ROOT = Path(__file__).resolve().parent.parent
IMAGE_LOCK = ROOT / "requirements" / "image.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
SBOM_PATH = "/usr/share/doc/retention/sbom.cdx.json"
BASE = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")
# The build stage's paths that the run here moves under its scratch root.
MOVED = re.compile(r"(?<![\w./-])/(opt|src|tmp)(?=[/\s]|$)")


# --- the Dockerfile, read -------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def stages(path: Path = ROOT / "Dockerfile") -> list[list[Instruction]]:
    """Instructions by stage (a stage starts at its FROM), continuation lines joined."""
    found: list[list[Instruction]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        if keyword.upper() == "FROM":
            found.append([])
        found[-1].append(Instruction(keyword.upper(), " ".join(args.split()), start))
        pending, start = "", 0
    return found


def commands(stage: list[Instruction]) -> list[str]:
    """Each shell command of the stage's RUNs (split at &&)."""
    return [c.strip() for i in stage if i.keyword == "RUN" for c in i.args.split("&&")]


def test_both_stages_are_pinned_by_the_same_digest_with_the_tag_in_a_comment():
    froms = [stage[0].args.split()[0] for stage in stages()]
    assert len(froms) == 2, froms
    assert all(BASE.match(image) for image in froms), froms
    assert froms[0] == froms[1], "both stages must be the same base image"
    text = (ROOT / "Dockerfile").read_text()
    header = text[:text.index("FROM ")]
    assert "python:3.11-slim-bookworm" in header and "Renovate" in header


def test_every_pip_install_is_from_a_lock_with_hashes_or_retention_without_dependencies():
    build, final = stages()
    installs = [c for c in commands(build) + commands(final) if re.search(r"\bpip\b.* install ", c)]
    from_locks = [c for c in installs if " -r " in c]
    assert {re.search(r" -r (\S+)", c)[1] for c in from_locks} == {
        "requirements/build.lock", "requirements/image.lock"}
    for command in from_locks:
        for flag in ("--require-hashes", "--no-deps", "--only-binary :all:"):
            assert flag in command, (flag, command)
    [wheel] = [c for c in installs if c not in from_locks]
    assert "--no-deps" in wheel and wheel.endswith("/tmp/dist/retention-*.whl"), wheel
    # The runtime venv never has pip or setuptools: made without them, filled from outside.
    assert "python -m venv --without-pip /opt/retention" in commands(build)
    for command in installs:
        if "/opt/retention" in command:
            assert "--python /opt/retention/bin/python install" in command, command


def test_the_final_stage_ships_the_venv_and_sbom_and_no_pip_or_setuptools(tmp_path: Path):
    final = stages()[1]
    copies = {i.args for i in final if i.keyword == "COPY"}
    assert copies == {"--from=build /opt/retention /opt/retention",
                      f"--from=build /opt/sbom/sbom.cdx.json {SBOM_PATH}"}
    runs = commands(final)
    assert not [c for c in runs if " install" in c], runs
    [uninstall] = [c for c in runs if "pip uninstall" in c]
    assert set(uninstall.split()) >= {"pip", "setuptools", "wheel", "packaging", "--yes"}
    removed = next(c for c in runs if c.startswith("rm -rf "))
    assert {"/usr/local/bin/pip", "/usr/local/lib/python3.11/ensurepip"} <= set(removed.split())
    # ... and the build stops if anything else is left beside the venv: that check, run here
    # on a Python with packages and on one without.
    [guard] = [c for c in runs if c.startswith("python -I -c ")]
    with_pip, bare = tmp_path / "with-pip", tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", with_pip], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    for venv, status, said in ((with_pip, 1, "packages left beside the venv: ['pip', "),
                               (bare, 0, "")):
        result = subprocess.run(["/bin/sh", "-c", f"{venv}/bin/{guard}"],
                                capture_output=True, text=True, check=False)
        assert (result.returncode, result.stderr[:len(said)]) == (status, said), result.stderr
    assert any(i.keyword == "ENV" and 'PATH="/opt/retention/bin:' in i.args for i in final)


def test_the_docs_and_the_chart_say_where_the_sbom_is():
    for doc in ("docs/operations.md", "helm/retention/templates/NOTES.txt"):
        assert SBOM_PATH in (ROOT / doc).read_text(), doc


# --- the lock, against pyproject.toml ------------------------------------------------------

def locked(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, SHA-256 hashes), read as plainly as pip would."""
    found = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        if block.startswith(("#", "-")) or not block.strip():
            continue
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+) \\\n", block)
        assert pin, f"{path.name}: not a pin with hashes: {block[:80]!r}"
        found[canonicalize_name(pin[1])] = (pin[2], set(re.findall(
            r"--hash=sha256:([0-9a-f]{64})", block)))
    return found


def lock_problems(pyproject: dict, image_lock: dict, build_lock: dict) -> list[str]:
    """What pyproject asks for that a lock does not hold: a runtime dependency or one of the
    `azure` extra missing from image.lock, or a build requirement from build.lock, or pinned
    at a version outside the range pyproject now gives."""
    wanted = [(r, image_lock) for r in pyproject["project"]["dependencies"]]
    wanted += [(r, image_lock) for r in pyproject["project"]["optional-dependencies"]["azure"]]
    wanted += [(r, build_lock) for r in pyproject["build-system"]["requires"]]
    problems = []
    for text, lock in wanted:
        requirement = Requirement(text)
        if requirement.marker and not any(requirement.marker.evaluate(
                {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11",
                 "python_full_version": "3.11.16", "platform_machine": machine})
                for machine in ("x86_64", "aarch64")):
            continue  # not installed on the image's platforms
        pinned = lock.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{text}: not locked")
        elif not requirement.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{text}: locked at {pinned[0]}")
    return problems


def test_the_locks_hold_every_dependency_pyproject_declares_with_hashes():
    """Fails when a dependency is added or its range moved without ./scripts/lock.sh."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    image, build = locked(IMAGE_LOCK), locked(BUILD_LOCK)
    assert lock_problems(pyproject, image, build) == []
    assert "azure-identity" in image
    assert all(hashes for _, hashes in [*image.values(), *build.values()])
    for lock in (IMAGE_LOCK, BUILD_LOCK):
        assert "--only-binary :all:" in lock.read_text().splitlines(), lock


def test_a_dependency_added_without_relocking_is_caught():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    image, build = locked(IMAGE_LOCK), locked(BUILD_LOCK)
    pyproject["project"]["dependencies"].append("rich>=13")
    pyproject["project"]["optional-dependencies"]["azure"] = ["azure-identity>=99"]
    pyproject["build-system"]["requires"].append("wheel>=0.40")
    assert lock_problems(pyproject, image, build) == [
        "rich>=13: not locked",
        f"azure-identity>=99: locked at {image['azure-identity'][0]}",
        "wheel>=0.40: not locked",
    ]


# --- the build stage, run ------------------------------------------------------------------

def admitted_by_dockerignore(source: str) -> bool:
    """The build context is an allowlist (`*`, then `!path` for each thing sent)."""
    patterns = (ROOT / ".dockerignore").read_text().split()
    assert patterns[0] == "*", "the test reads only an allowlist .dockerignore"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    return any(source == a or source.startswith(a + "/") for a in allowed)


def run_build_stage(scratch: Path) -> None:
    root = scratch / "root"
    for directory in ("opt", "tmp"):  # as in the base image
        (root / directory).mkdir(parents=True)
    shim = scratch / "bin"
    shim.mkdir(parents=True)
    # The base image's `python`: this machine's Python 3.11 itself, not the suite's venv.
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    cwd = root

    def moved(text: str) -> str:
        return MOVED.sub(lambda m: f"{root}/{m[1]}", text)

    for instruction in stages()[0][1:]:
        if instruction.keyword == "WORKDIR":
            cwd = Path(moved(instruction.args))
            cwd.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, dest = instruction.args.split()
            target = Path(moved(dest)) if dest.startswith("/") else cwd / dest
            for source in sources:
                assert admitted_by_dockerignore(source), f".dockerignore leaves out {source}"
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    into = target / origin.name if dest.endswith("/") else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, into)
        elif instruction.keyword == "RUN":
            result = subprocess.run(["/bin/sh", "-c", moved(instruction.args)], cwd=cwd,
                                    env=env, capture_output=True, text=True, check=False)
            assert result.returncode == 0, (
                f"Dockerfile:{instruction.line}: {result.stdout[-3000:]}{result.stderr[-3000:]}")
        else:
            raise AssertionError(f"Dockerfile:{instruction.line}: the test does not run "
                                 f"{instruction.keyword} in the build stage")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The build stage's root after its last instruction."""
    scratch = tmp_path_factory.mktemp("image")
    run_build_stage(scratch)
    return scratch / "root"


def venv_list(venv: Path) -> dict[str, str]:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "list",
         "--format", "json"], capture_output=True, text=True, check=True)
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed.stdout)}


def test_the_image_venv_holds_exactly_the_lock_and_retention(built: Path):
    venv = built / "opt" / "retention"
    expected = {name: version for name, (version, _) in locked(IMAGE_LOCK).items()}
    assert venv_list(venv) == {**expected, "retention": retention.__version__}
    assert not list((venv / "bin").glob("pip*"))
    # The Entra ID credential of docs/registries.md is there, and retention runs.
    imported = subprocess.run([venv / "bin" / "python", "-c", "import azure.identity"],
                              capture_output=True, text=True, check=False)
    assert imported.returncode == 0, imported.stderr
    version = subprocess.run([venv / "bin" / "retention", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"retention {retention.__version__}"


def test_the_sbom_is_valid_cyclonedx_and_lists_exactly_the_lock(built: Path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = (built / "opt" / "sbom" / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    lock = locked(IMAGE_LOCK)
    components = {c["name"]: c for c in sbom["components"]}
    assert {n: c["version"] for n, c in components.items()} == {
        n: version for n, (version, _) in lock.items()}
    for name, component in components.items():
        assert component["purl"] == f"pkg:pypi/{name}@{lock[name][0]}"
        [digest] = component["hashes"]
        assert digest["alg"] == "SHA-256" and digest["content"] in lock[name][1], name
    [wheel] = (built / "tmp" / "dist").glob("retention-*.whl")
    subject = sbom["metadata"]["component"]
    assert (subject["name"], subject["version"]) == ("retention", retention.__version__)
    assert subject["hashes"] == [
        {"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}]
    # What retention requires directly, from the lock's "via" comments: pyproject's list.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [*pyproject["dependencies"], *pyproject["optional-dependencies"]["azure"]]
    graph = {d["ref"]: set(d["dependsOn"]) for d in sbom["dependencies"]}
    assert graph[subject["bom-ref"]] == {
        components[canonicalize_name(Requirement(r).name)]["bom-ref"] for r in direct}
    refs = {subject["bom-ref"], *(c["bom-ref"] for c in components.values())}
    assert set(graph) == refs and set().union(*graph.values()) <= refs
    assert graph[components["httpx2"]["bom-ref"]] >= {components["httpcore2"]["bom-ref"]}


def sbom_script(built: Path, report: Path, lock: Path = IMAGE_LOCK):
    [wheel] = (built / "tmp" / "dist").glob("retention-*.whl")
    return subprocess.run(
        [sys.executable, ROOT / "scripts" / "sbom.py", "--lock", lock, "--report", report,
         "--wheel", wheel, "--output", report.parent / "sbom.json"],
        capture_output=True, text=True, check=False)


def test_the_sbom_refuses_an_install_that_differs_from_the_lock(built: Path, tmp_path: Path):
    report = json.loads((built / "tmp" / "install-report.json").read_text())
    by_name = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    by_name["pyyaml"]["metadata"]["version"] = "5.4"
    by_name["uvloop"]["download_info"]["archive_info"]["hashes"]["sha256"] = "0" * 64
    report["install"].remove(by_name["orjson"])
    changed = tmp_path / "report.json"
    changed.write_text(json.dumps(report))
    result = sbom_script(built, changed)
    assert result.returncode == 1
    assert result.stderr.startswith("sbom: ") and "the install differs from the lock" in \
        result.stderr
    for problem in ("pyyaml 5.4 installed, the lock pins", "uvloop", "is not one of the lock's",
                    "orjson", "in the lock but not installed"):
        assert problem in result.stderr, problem
    assert not (tmp_path / "sbom.json").exists()

    unhashed = tmp_path / "unhashed.lock"
    unhashed.write_text(IMAGE_LOCK.read_text() + "rich==13.0.0\n")
    result = sbom_script(built, built / "tmp" / "install-report.json", lock=unhashed)
    assert result.returncode == 1 and "not a hashed pin: rich==13.0.0" in result.stderr
