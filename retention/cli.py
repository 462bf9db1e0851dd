"""The command line: a thin layer over setup, collect, planner, executor and daemon.

Exit codes: 0 success; 1 the run failed (registry errors, failed deletions, max_deletions
exceeded); 2 invalid config, policy, allowlist or usage.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from retention import __version__, eventloop, logs
from retention.allowlist import unknown_host_pins
from retention.config import parse_listen
from retention.durations import parse_duration
from retention.errors import ConfigError, Problem, RetentionError, UsageError
from retention.inventory import Inventory, Manifest, inventory_from_json, inventory_to_json
from retention.kube import NOTHING, InUse, in_use_pass
from retention.planner import Plan
from retention.policy import (
    Policy,
    load_policies,
    policy_problem,
    policy_warnings,
    source_location,
)
from retention.progress import Progress
from retention.report import columns, human_bytes, to_json, to_table
from retention.runs import (
    RunResult,
    collect,
    open_clients,
    plan_all,
    registries_of,
    restored_holds,
    run_pass,
    storage_of,
    warn_mistakes,
)
from retention.schema import policy_schema
from retention.setup import Setup, load_setup
from retention.state import State
from retention.statelock import state_lock
from retention.storage import RegistryStorage, RepositoryStorage

OK, FAILED, INVALID = 0, 1, 2


# Each command's help ends with an example and the exit codes, as kubectl's and terraform's
# do: the reader of `--help` should not need the docs for the common case.
_EXIT_CODES = """exit codes:
  0  success
  1  the run failed: a registry or cluster unreadable, a deletion failed, max_deletions
     exceeded, the state database unusable or locked by another process
  2  invalid config, policy, allowlist or usage"""
_EXAMPLES = {
    "validate": "retention validate -c retention.yaml\n  retention validate policies/",
    "plan": "retention plan -c retention.yaml --policy ci-builds -o json\n"
            "  retention plan -c retention.yaml --save plan.json   # for review, then apply",
    "apply": "retention apply plan.json -c retention.yaml --max-age 24h",
    "diff": "retention diff --base ../main/policies --inventory inventory.json -o markdown",
    "run": "retention run -c retention.yaml --dry-run",
    "inventory": "retention inventory -c retention.yaml -o json > inventory.json\n"
                 "  retention plan -c retention.yaml --inventory inventory.json",
    "in-use": "retention in-use -c retention.yaml -o json",
    "restore": "retention restore -c retention.yaml --since 2h --dry-run\n"
               "  retention restore -c retention.yaml --digest 3f5a0c1e9b7d",
    "serve": "retention serve -c /etc/retention/retention.yaml",
    "schema": "retention schema > policy.schema.json",
    "completion": "source <(retention completion bash)\n"
                  "  retention completion zsh > \"${fpath[1]}/_retention\"",
}
_EXIT_CODES_MORE = {
    "apply": ", or a saved\n     plan refused (older than --max-age, made from other config, "
             "policy or allowlist\n     files, not a saved plan): nothing deleted",
    "diff": "\n     (0 whatever the change would delete or keep)",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
CONFIG_ENV = "RETENTION_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retention", allow_abbrev=False,
        description="Keeps container registries at a sane size with YAML retention policies.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{_EXIT_CODES}\n\nconfiguration: -c FILE, else ${CONFIG_ENV}, else "
               "./retention.yaml",
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *, config: bool = True, output: bool = False,
                formats: tuple[str, ...] = ("table", "json")) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=f"example:\n  {_EXAMPLES[name]}\n\n{_EXIT_CODES}"
                                  f"{_EXIT_CODES_MORE.get(name, '')}")
        if config:
            p.add_argument("-c", "--config", type=Path, metavar="FILE",
                           help=f"the retention.yaml to use (default: ${CONFIG_ENV}, else "
                                "./retention.yaml)")
            p.add_argument("--log-level", choices=LOG_LEVELS, metavar="LEVEL",
                           help=f"log this and above ({', '.join(LOG_LEVELS)})")
        if output:
            p.add_argument("-o", "--output", choices=formats, default="table",
                           help=f"{', '.join(formats)} (table, the default, is for people)")
        return p

    def with_wait(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true",
                       help="wait for another process holding the state's lock, instead of "
                            "exiting 1")

    p = command("validate", "check config, policies and allowlist; never touches a registry",
                output=True)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="policy files or directories to check")

    for name, text in (("plan", "evaluate the policies and print the plan; never deletes"),
                       ("run", "one pass: deletes only in mode enforce without --dry-run")):
        p = command(name, text, output=True)
        p.add_argument("--policy", action="append", metavar="NAME",
                       help="only this policy (repeatable)")
        if name == "plan":
            p.add_argument("--inventory", type=Path, metavar="FILE",
                           help="plan offline on an inventory written by "
                                "'retention inventory --output json'")
            p.add_argument("--save", type=Path, metavar="FILE",
                           help="also write the plan to FILE, for review and "
                                "'retention apply FILE'")
        else:
            p.add_argument("--dry-run", action="store_true",
                           help="plan and report, delete nothing, whatever the mode")
            with_wait(p)

    p = command("apply", "delete what a saved plan lists and the policies still delete now",
                output=True)
    p.add_argument("file", type=Path, metavar="FILE",
                   help="a plan written by 'retention plan --save FILE'")
    p.add_argument("--max-age", default="24h", metavar="DURATION",
                   help="refuse a plan saved longer ago than this (default 24h)")
    p.add_argument("--dry-run", action="store_true",
                   help="report what would be deleted, delete nothing, whatever the mode")
    with_wait(p)

    p = command("diff", "what a policy change would delete or keep differently; never "
                "deletes", output=True, formats=("table", "json", "markdown"))
    p.add_argument("--base", type=Path, required=True, metavar="PATH",
                   help="the policies to compare with: a file or directory (e.g. the base "
                        "branch's checkout)")
    p.add_argument("--inventory", type=Path, metavar="FILE",
                   help="compare on an inventory written by 'retention inventory --output "
                        "json' instead of reading the registries")

    p = command("inventory", "print what the registries hold, as the planner sees it",
                output=True)
    p.add_argument("--registry", action="append", metavar="NAME",
                   help="only this registry (repeatable)")
    p.add_argument("--summary", action="store_true",
                   help="bytes per repository (unique, shared), orphans, and what the "
                        "policies would reclaim, largest first")
    p.add_argument("--top", type=int, metavar="N",
                   help="with --summary: the N largest repositories, the rest summed")

    command("in-use", "print the images the configured Kubernetes clusters use, per "
            "cluster, namespace and workload", output=True)

    p = command("restore", "put back manifests retention deleted, from the journal",
                output=True)
    p.add_argument("--since", metavar="DURATION",
                   help="what was deleted this long ago or less (e.g. 2h)")
    p.add_argument("--digest", action="append", metavar="D",
                   help="this deleted digest: sha256:<hex>, or its first 12 or more hex "
                        "digits as the tables print them (repeatable)")
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="only what this policy deleted (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="say what would be put back")
    with_wait(p)

    p = command("serve", "run the daemon")
    with_wait(p)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to serve /metrics, /healthz and /readyz, instead of the "
                        "config's listen (e.g. the pod IP: --listen $(POD_IP):9090)")
    command("schema", "print the JSON Schema of policy files", config=False)
    p = command("completion", "print a shell completion script", config=False)
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def find_config(given: Path | None, *, required: bool = True) -> Path | None:
    """Where the configuration is: --config/-c, else $RETENTION_CONFIG, else
    ./retention.yaml (as kubectl finds its kubeconfig)."""
    if given is not None:
        return given
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path("retention.yaml")
    if default.is_file():
        return default
    if not required:
        return None
    raise UsageError(f"no configuration: give -c FILE, set {CONFIG_ENV}, or run where "
                     "retention.yaml is")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help and --version exit 0, usage errors 2
        return int(exc.code or 0)
    try:
        return _dispatch(args, out, err)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        print(f"retention: {len(exc.problems)} problem(s) found; nothing was changed",
              file=err)
        return INVALID
    except UsageError as exc:
        print(f"retention: {exc}", file=err)
        return INVALID
    except RetentionError as exc:
        print(f"retention: {exc}", file=err)
        return FAILED
    except KeyboardInterrupt:
        print("retention: interrupted", file=err)
        return 130


class _Output:
    """stdout that a reader may close (`retention inventory | head`): the rest of the output
    goes nowhere, quietly, and the command ends with its own exit code, as `git log | head`
    does; not 1 for the reader's choice, nor 0 hiding a failed run."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.closed_by_reader = False

    def _gone(self) -> None:
        self.closed_by_reader = True
        # Python flushes stdout at exit too: point it at /dev/null so that is quiet as well.
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def isatty(self) -> bool:
        return self._stream.isatty()


def run() -> None:
    out = _Output(sys.stdout)
    code = main(stdout=out)  # type: ignore[arg-type]
    out.flush()
    if threading.active_count() > 1:
        sys.exit(code)  # a thread still runs: the interpreter waits for it, as always
    # The command is done: its output is flushed and its state closed. Exiting without
    # tearing the interpreter down skips freeing the scan's and the plan's objects one by
    # one (60 ms for 4,000 images), time a user waits for nothing. Exit handlers (logging's,
    # a coverage tool's) still run.
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _configure_logs(setup: Setup, err: TextIO, *, level: str) -> None:
    # A log_format written in the config wins; unset, a terminal gets console lines.
    fmt = setup.config.log_format or ("console" if err.isatty() else "json")
    logs.configure(fmt=fmt, stream=err, level=level, secrets=setup.secrets())


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "schema":
        json.dump(policy_schema(), out, indent=2)
        out.write("\n")
        return OK
    if args.command == "completion":
        from retention.completion import script

        out.write(script(_parser(), args.shell))
        return OK
    if args.command == "validate":
        return _validate(args, out, err)
    args.config = find_config(args.config)
    listen = None
    if getattr(args, "listen", None) is not None:
        listen = parse_listen(args.listen)
        if listen is None:
            raise UsageError(f"--listen must be host:port, like 10.1.2.3:9090, not "
                             f"{args.listen!r}")
    setup = load_setup(args.config)
    # `run` is an audit trail (one event per deletion and per protected match, as the daemon
    # logs them); `plan` and `inventory` print their answer and log only what went wrong.
    _configure_logs(setup, err, level=args.log_level or (
        "info" if args.command in ("run", "apply", "serve", "restore") else "warning"))
    if args.command == "inventory":
        return _inventory(setup, args, out, err)
    if args.command == "in-use":
        from retention.kube import print_in_use
        return FAILED if eventloop.run(print_in_use(setup.config, out, fmt=args.output)) else OK
    if args.command == "plan":
        return _plan(setup, args, out, err)
    if args.command == "diff":
        return _diff(setup, args, out, err)
    if args.command == "apply":
        return _apply(setup, args, out, err)
    if args.command in ("run", "restore", "serve"):
        # One enforcing process per state (SPEC "Embedded state").
        with state_lock(setup.config.state_dir, command=args.command, wait=args.wait,
                        on_wait=lambda text: print(f"retention: {text}", file=err)):
            if args.command == "run":
                return _run(setup, args, out, err)
            if args.command == "restore":
                return _restore(setup, args, out)
            from retention.daemon import serve

            return serve(args.config, err=err, log_level=args.log_level, listen=listen)
    raise AssertionError(args.command)


def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policies = 0
    warnings: list[Problem] = []
    problems: list[Problem] = []
    config = find_config(args.config, required=not args.paths)
    try:
        if config is not None:
            setup = load_setup(config)
            policies += len(setup.policies)
            registries = setup.config.registries.keys()
            warnings.extend(setup_warnings(setup))
        else:
            registries = None
        if args.paths:
            loaded = load_policies(args.paths, registries=registries)
            policies += len(loaded)
            warnings.extend(policy_warnings(loaded))
    except ConfigError as exc:
        if args.output != "json":
            raise
        problems.extend(exc.problems)
    if args.output == "json":
        # For CI annotations: one record per problem, located (GitHub's ::error file=...).
        def record(p: Problem, severity: str) -> dict[str, object]:
            return {"severity": severity, "file": p.path, "line": p.line,
                    "column": p.column, "message": p.message}
        _print({"valid": not problems, "policies": policies if not problems else None,
                "problems": [*(record(p, "error") for p in problems),
                             *(record(w, "warning") for w in warnings)]}, out)
        return INVALID if problems else OK
    for warning in warnings:
        print(f"{warning.path}:{warning.line}:{warning.column}: warning: {warning.message}",
              file=err)
    print(f"ok: {policies} policies valid", file=out)
    return OK


def setup_warnings(setup: Setup) -> list[Problem]:
    """Mistakes that would silently do nothing, found without a registry: a pin for a host
    no registry has; a policy whose patterns match none of a registry's listed
    `repositories` (the registry's own listing is checked by plan, run and the daemon)."""
    found = policy_warnings(setup.policies)
    # A warning, not an error: the pin may be for a registry configured later.
    for pin in unknown_host_pins(setup.allowlist, setup.config.hosts()):
        path, line = source_location(pin.source)
        found.append(Problem(path, line, 1, f"allowlist entry for host {pin.host}, which no "
                             "configured registry has (url or aliases): it protects nothing"))
    for policy in setup.policies:
        settings = setup.config.registries.get(policy.registry or "")
        if (settings is not None and settings.repositories
                and not any(policy.applies_to(r) for r in settings.repositories)):
            found.append(policy_problem(policy, "repositories match none of registry "
                                         f"{settings.name}'s listed repositories: it does "
                                         "nothing"))
    return found


def _inventory(setup: Setup, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    names = args.registry or sorted(setup.config.registries)
    unknown = [n for n in names if n not in setup.config.registries]
    if unknown:
        raise UsageError(f"no registry named {', '.join(unknown)} in {args.config}")
    if args.top is not None and (not args.summary or args.top < 1):
        raise UsageError("--top N goes with --summary, and N is at least 1")
    if args.summary:
        return _summary(setup, names, args, out, err)
    inventories = eventloop.run(_collect(setup, names, err))
    if args.output == "json":
        json.dump({"format_version": 1,
                   "inventories": [inventory_to_json(inventories[n]) for n in names]},
                  out, indent=1)
        out.write("\n")
    else:
        for name in names:
            inv = inventories[name]
            manifests = sum(len(r.manifests) for r in inv.repositories)
            tags = sum(len(m.tags) + len(m.referrer_tags) for r in inv.repositories
                       for m in r.manifests)
            print(f"registry {name} ({inv.host}): {len(inv.repositories)} repositories, "
                  f"{manifests} manifests, {tags} tags", file=out)
            for repo in inv.repositories:
                state = f"  ERROR: {repo.error}" if repo.error else ""
                print(f"  {repo.name}: {len(repo.manifests)} manifests{state}", file=out)
                parents = {c: m.digest for m in repo.manifests for c in m.children}
                present = {m.digest for m in repo.manifests}
                for m in repo.manifests:
                    print(f"    {m.digest[:19]}  {_what(m, parents, present)}", file=out)
    failed = any(r.error for inv in inventories.values() for r in inv.repositories)
    return FAILED if failed else OK


def _summary(setup: Setup, names: list[str], args: argparse.Namespace, out: TextIO,
             err: TextIO) -> int:
    """Where the storage is: the figures of the storage metrics, per repository, with what
    the current policies would reclaim there. It reads what `plan` reads, no more."""
    policies = tuple(p for p in setup.policies if p.registry in names)
    live = _read_live(setup, names, err)
    inventories = live.inventories
    the_plan = plan_all(setup, inventories, policies, now=live.now, in_use=live.in_use,
                        restored=live.restored)
    figures = storage_of(inventories, the_plan)
    top = args.top
    if args.output == "json":
        _print({"registries": [_summary_json(figures[n], top) for n in names]}, out)
    else:
        for name in names:
            out.write(_summary_table(figures[name], top))
    failed = any(r.error for inv in inventories.values() for r in inv.repositories)
    return FAILED if failed else OK


@dataclass(frozen=True, slots=True)
class _Live:
    """What the registries hold now, with the protections of now, for planning."""

    inventories: dict[str, Inventory]
    now: datetime
    in_use: InUse
    restored: dict[tuple[str, str, str], datetime]


def _read_live(setup: Setup, names: list[str], err: TextIO) -> _Live:
    """Read the registries as `plan` does (recording what it saw), with the clusters' in-use
    images and the restore holds; no more requests than `plan` makes."""

    async def read() -> _Live:
        state = State.open(setup.config.state_dir)
        try:
            async with open_clients(setup, names) as clients:
                inventories = await collect(clients, state, progress=Progress.on(err))
                now = datetime.now(UTC)
                in_use = await in_use_pass(setup.config, inventories, state, now=now)
                return _Live(inventories, now, in_use, restored_holds(setup, state, now))
        finally:
            state.close()

    return eventloop.run(read())


def _shown(figures: RegistryStorage, top: int | None) -> list[RepositoryStorage]:
    if top is None:
        return list(figures.repositories)
    head, rest = figures.top(top)
    return [*head, *([rest] if rest is not None else [])]


def _summary_json(figures: RegistryStorage, top: int | None) -> dict:
    return {"registry": figures.registry, "bytes": figures.bytes,
            "untagged_bytes": figures.untagged_bytes,
            "repositories": [{"repository": r.repository, "manifests": r.manifests,
                              "tags": r.tags, "orphans": r.orphans,
                              "unique_bytes": r.unique_bytes, "shared_bytes": r.shared_bytes,
                              "reclaimable_bytes": r.reclaimable_bytes}
                             for r in _shown(figures, top)]}


def _summary_table(figures: RegistryStorage, top: int | None) -> str:
    rows = [(r.repository, str(r.manifests), str(r.tags), str(r.orphans),
             human_bytes(r.unique_bytes), human_bytes(r.shared_bytes),
             human_bytes(r.reclaimable_bytes)) for r in _shown(figures, top)]
    rows.append(("total", str(sum(r.manifests for r in figures.repositories)),
                 str(sum(r.tags for r in figures.repositories)),
                 str(sum(r.orphans for r in figures.repositories)),
                 human_bytes(sum(r.unique_bytes for r in figures.repositories)), "-",
                 human_bytes(sum(r.reclaimable_bytes for r in figures.repositories))))
    header = ("REPOSITORY", "MANIFESTS", "TAGS", "ORPHANS", "UNIQUE", "SHARED", "RECLAIMABLE")
    lines = [f"registry {figures.registry}: {human_bytes(figures.bytes)} stored, "
             f"{human_bytes(figures.untagged_bytes)} held only by orphans",
             *columns(header, rows), ""]
    return "\n".join(lines)


def _what(m: Manifest, parents: Mapping[str, str], present: AbstractSet[str]) -> str:
    """Its tags; for an untagged manifest, what it is: a child of an index and a referrer
    are not orphans, and `<untagged>` alone would read as one."""
    tags = ",".join(m.tags + m.referrer_tags)
    if tags:
        return tags
    if m.digest in parents:
        return f"<untagged: child of {parents[m.digest][:19]}>"
    if m.subject is not None and m.subject in present:
        return f"<untagged: referrer of {m.subject[:19]}>"
    return "<untagged: orphan>"


def _read_inventory(path: Path, policies: Sequence[Policy]) -> dict[str, Inventory]:
    """The inventories `inventory --output json` wrote, by registry; each registry the
    policies use must be there."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        inventories = {inv.registry: inv for inv in
                       (inventory_from_json(d) for d in doc["inventories"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError([Problem(str(path), 1, 1,
                                   f"cannot read inventory: {exc}")]) from None
    missing = [n for n in registries_of(policies) if n not in inventories]
    if missing:
        raise UsageError(f"{path} holds no inventory of registry {', '.join(missing)}")
    return inventories


def _plan(setup: Setup, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    digest = None
    if args.save is not None:
        from retention import reviewed

        # The digest of exactly the files this plan is made from: `apply` refuses the plan
        # once any of them is edited.
        setup, digest = reviewed.setup_with_digest(args.config, setup)
    policies = setup.select(args.policy)
    if args.inventory is not None:
        inventories = _read_inventory(args.inventory, policies)
        warn_mistakes(setup, policies, inventories)
        the_plan = plan_all(setup, inventories, policies, now=datetime.now(UTC))
        problems: tuple[str, ...] = ()
        # A plan is as old as what it was made from: a recorded inventory's time.
        saved_at = min([the_plan.now, *(inventories[n].collected_at
                                         for n in registries_of(policies))])
    else:
        result = _pass(setup, policies, dry_run=True, err=err)
        the_plan, problems = result.plan, _problems(result)
        saved_at = the_plan.now
    document = to_json(the_plan, mode="dry-run", problems=problems)
    if digest is not None:
        reviewed.save(args.save, document, at=saved_at, digest=digest,
                      policies=[p.name for p in policies])
    _print(document if args.output == "json" else
           to_table(the_plan, mode="dry-run", problems=problems), out)
    # Exit 1 wherever `run` would fail before deleting: a pull request's gate sees it.
    failed = problems or any(p.aborted or p.errors for p in the_plan.policies)
    return FAILED if failed else OK


def _problems(result: RunResult) -> tuple[str, ...]:
    """What made a pass fail beyond single repositories and deletions."""
    return (result.state_error,) if result.state_error else ()


def _run(setup: Setup, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policies = setup.select(args.policy)
    dry_run = args.dry_run or not setup.config.enforce
    result = _pass(setup, policies, dry_run=dry_run, err=err)
    mode = "dry-run" if dry_run else "enforce"
    outcomes = result.report.outcomes
    problems = _problems(result)
    _print(to_json(result.plan, mode=mode, outcomes=outcomes,
                   run_errors=result.report.errors, problems=problems)
           if args.output == "json" else
           to_table(result.plan, mode=mode, outcomes=outcomes,
                    run_errors=result.report.errors, problems=problems), out)
    return FAILED if result.failed else OK



def _apply(setup: Setup, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Delete what the saved plan lists and a fresh plan still deletes (SPEC "Reviewed
    deletions"); every refusal (exit 2) comes before the lock and any registry request."""
    from retention import reviewed

    try:
        max_age = parse_duration(args.max_age)
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from None
    saved = reviewed.load(args.file)
    setup, digest = reviewed.setup_with_digest(args.config, setup)
    reviewed.check(saved, now=datetime.now(UTC), max_age=max_age, digest=digest)
    policies = (setup.select(list(saved.policies)) if saved.policies else
                () if saved.policies is not None else setup.policies)
    with state_lock(setup.config.state_dir, command="apply", wait=args.wait,
                    on_wait=lambda text: print(f"retention: {text}", file=err)):
        # The file ages while --wait waits: its age counts until the deletions start.
        reviewed.check(saved, now=datetime.now(UTC), max_age=max_age, digest=digest)
        dry_run = args.dry_run or not setup.config.enforce
        review = reviewed.Review(saved)
        result = _pass(setup, policies, dry_run=dry_run, err=err, select=review)
    mode = "dry-run" if dry_run else "enforce"
    shown = review.shown(result.plan)
    outcomes = review.outcomes_with(result.report.outcomes)
    problems = _problems(result)
    if args.output == "json":
        document = to_json(shown, mode=mode, outcomes=outcomes,
                           run_errors=result.report.errors, problems=problems)
        document["summary"]["not_reviewed"] = len(review.not_reviewed)
        document["not_reviewed"] = reviewed.not_reviewed_json(review)
        _print(document, out)
    else:
        _print(to_table(shown, mode=mode, outcomes=outcomes, run_errors=result.report.errors,
                        problems=problems) + reviewed.not_reviewed_text(review), out)
    return FAILED if result.failed else OK


def _diff(setup: Setup, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The base policies and the current ones planned on one inventory at one instant;
    what differs is printed. Never deletes; exit 0 whatever differs."""
    from retention import diff

    base = load_policies([args.base], registries=setup.config.registries.keys())
    head = setup.policies
    names = registries_of((*head, *base))
    if args.inventory is not None:
        live = _Live(_read_inventory(args.inventory, (*head, *base)), datetime.now(UTC),
                     NOTHING, {})
    else:
        live = _read_live(setup, names, err)
    warn_mistakes(setup, head, live.inventories)
    plans = [plan_all(setup, live.inventories, policies, now=live.now, in_use=live.in_use,
                      restored=live.restored) for policies in (base, head)]
    found = diff.diff(*plans)
    if args.output == "json":
        _print(diff.to_json(found), out)
    else:
        _print(diff.to_markdown(found) if args.output == "markdown" else diff.to_table(found),
               out)
    return OK


def _restore(setup: Setup, args: argparse.Namespace, out: TextIO) -> int:
    from retention import restore

    if args.since is None and not args.digest:
        raise UsageError("restore needs --since DURATION, --digest D, or both")
    since = None
    if args.since is not None:
        try:
            since = parse_duration(args.since)
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
    state = State.open(setup.config.state_dir)
    if state.path is None:
        raise UsageError("restore reads the journal in state_dir: set state_dir in "
                         f"{args.config} (or make it usable)")

    async def go() -> restore.RestoreReport:
        async with open_clients(setup, sorted(setup.config.registries)) as clients:
            return await restore.restore(clients, state, since=since, digests=digests,
                                         policies=args.policy or (), dry_run=args.dry_run,
                                         hold=setup.config.restored_hold)

    try:
        # Before any registry is asked: a digest or policy that names nothing is a mistake
        # to be told about, not an empty restore.
        digests = restore.resolve_digests(state, args.digest or ())
        restore.check_policies(state, args.policy or (), (p.name for p in setup.policies))
        report = eventloop.run(go())
    finally:
        state.close()
    _print(restore.to_json(report) if args.output == "json" else
           restore.to_table(report, now=datetime.now(UTC)), out)
    return FAILED if report.failed else OK


def _pass(setup: Setup, policies: tuple[Policy, ...], *, dry_run: bool, err: TextIO,
          select: Callable[[Plan, Mapping[str, Inventory]], Plan] | None = None
          ) -> RunResult:
    state = State.open(setup.config.state_dir)
    try:
        return eventloop.run(run_pass(setup, policies, dry_run=dry_run, state=state,
                                      progress=Progress.on(err), select=select))
    finally:
        state.close()


async def _collect(setup: Setup, names: list[str], err: TextIO) -> dict[str, Inventory]:
    state = State.open(setup.config.state_dir)
    try:
        async with open_clients(setup, names) as clients:
            return await collect(clients, state, progress=Progress.on(err))
    finally:
        state.close()


def _print(document: dict | str, out: TextIO) -> None:
    if isinstance(document, str):
        out.write(document)
        return
    # orjson writes the same indented document as json.dumps(indent=2), 30x faster (json's
    # indenting encoder is pure Python: 0.36 s for a plan of 20,000 images). Not for what
    # json escapes and orjson writes as it is (text beyond ASCII, DEL) or refuses (a lone
    # surrogate, which a registry's error body can hold): the output stays byte for byte
    # what it was.
    import orjson  # 11 ms to import: only where JSON is written

    try:
        encoded: bytes | None = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    except TypeError:
        encoded = None
    if encoded is not None and encoded.isascii() and b"\x7f" not in encoded:
        out.write(encoded.decode())
    else:
        out.write(json.dumps(document, indent=2))
    out.write("\n")
