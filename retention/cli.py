"""The command line: a thin layer over setup, collect, planner, executor and daemon.

Exit codes: 0 success; 1 the run failed (registry errors, failed deletions, max_deletions
exceeded); 2 invalid config, policy, allowlist or usage.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from retention import __version__, eventloop, logs
from retention.allowlist import unknown_host_pins
from retention.config import parse_listen
from retention.durations import parse_duration
from retention.errors import ConfigError, Problem, RetentionError, UsageError
from retention.inventory import Inventory, inventory_from_json, inventory_to_json
from retention.policy import Policy, load_policies
from retention.report import to_json, to_table
from retention.runs import RunResult, collect, open_clients, plan_all, registries_of, run_pass
from retention.schema import policy_schema
from retention.setup import Setup, load_setup
from retention.state import State

OK, FAILED, INVALID = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retention",
        description="Keeps container registries at a sane size with YAML retention policies.",
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser, *, required: bool = True) -> None:
        p.add_argument("--config", required=required, type=Path, metavar="FILE",
                       help="the retention.yaml to use")

    p = sub.add_parser("validate", help="check config, policies and allowlist; never touches "
                       "a registry")
    with_config(p, required=False)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="policy files or directories to check")

    for name, text in (("plan", "evaluate the policies and print the plan; never deletes"),
                       ("run", "one pass: deletes only in mode enforce without --dry-run")):
        p = sub.add_parser(name, help=text)
        with_config(p)
        p.add_argument("--policy", action="append", metavar="NAME",
                       help="only this policy (repeatable)")
        p.add_argument("--output", choices=("table", "json"), default="table")
        if name == "plan":
            p.add_argument("--inventory", type=Path, metavar="FILE",
                           help="plan offline on an inventory written by "
                                "'retention inventory --output json'")
        else:
            p.add_argument("--dry-run", action="store_true",
                           help="plan and report, delete nothing, whatever the mode")

    p = sub.add_parser("inventory", help="print what the registries hold, as the planner "
                       "sees it")
    with_config(p)
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.add_argument("--registry", action="append", metavar="NAME",
                   help="only this registry (repeatable)")

    p = sub.add_parser("in-use", help="print the images the configured Kubernetes clusters "
                       "use, per cluster, namespace and workload")
    with_config(p)
    p.add_argument("--output", choices=("table", "json"), default="table")

    p = sub.add_parser("restore", help="put back manifests retention deleted, from the "
                       "journal")
    with_config(p)
    p.add_argument("--since", metavar="DURATION",
                   help="what was deleted this long ago or less (e.g. 2h)")
    p.add_argument("--digest", action="append", metavar="D",
                   help="this deleted digest, sha256:<hex> (repeatable)")
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="only what this policy deleted (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="say what would be put back")
    p.add_argument("--output", choices=("table", "json"), default="table")

    p = sub.add_parser("serve", help="run the daemon")
    with_config(p)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to serve /metrics, /healthz and /readyz, instead of the "
                        "config's listen (e.g. the pod IP: --listen $(POD_IP):9090)")
    sub.add_parser("schema", help="print the JSON Schema of policy files")
    return parser


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


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`retention schema | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
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
    fmt = "console" if err.isatty() else setup.config.log_format
    logs.configure(fmt=fmt, stream=err, level=level, secrets=setup.secrets())


def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "schema":
        json.dump(policy_schema(), out, indent=2)
        out.write("\n")
        return OK
    if args.command == "validate":
        return _validate(args, out, err)
    listen = None
    if getattr(args, "listen", None) is not None:
        listen = parse_listen(args.listen)
        if listen is None:
            raise UsageError(f"--listen must be host:port, like 10.1.2.3:9090, not "
                             f"{args.listen!r}")
    setup = load_setup(args.config)
    # `run` is an audit trail (one event per deletion and per protected match, as the daemon
    # logs them); `plan` and `inventory` print their answer and log only what went wrong.
    _configure_logs(setup, err, level="info" if args.command in ("run", "serve", "restore")
                    else "warning")
    if args.command == "inventory":
        return _inventory(setup, args, out)
    if args.command == "in-use":
        from retention.kube import print_in_use
        return FAILED if eventloop.run(print_in_use(setup.config, out, fmt=args.output)) else OK
    if args.command == "plan":
        return _plan(setup, args, out)
    if args.command == "run":
        return _run(setup, args, out)
    if args.command == "restore":
        return _restore(setup, args, out)
    if args.command == "serve":
        from retention.daemon import serve

        return serve(args.config, err=err, listen=listen)
    raise AssertionError(args.command)


def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    policies = 0
    if args.config is not None:
        setup = load_setup(args.config)
        policies += len(setup.policies)
        registries = setup.config.registries.keys()
        # A warning, not an error: the pin may be for a registry configured later.
        for pin in unknown_host_pins(setup.allowlist, setup.config.hosts()):
            print(f"{pin.source}: warning: allowlist entry for host {pin.host}, which no "
                  "configured registry has (url or aliases): it protects nothing", file=err)
    else:
        registries = None
    if args.paths:
        policies += len(load_policies(args.paths, registries=registries))
    elif args.config is None:
        raise UsageError("validate needs --config FILE, policy paths, or both")
    print(f"ok: {policies} policies valid", file=out)
    return OK


def _inventory(setup: Setup, args: argparse.Namespace, out: TextIO) -> int:
    names = args.registry or sorted(setup.config.registries)
    unknown = [n for n in names if n not in setup.config.registries]
    if unknown:
        raise UsageError(f"no registry named {', '.join(unknown)} in {args.config}")
    inventories = eventloop.run(_collect(setup, names))
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
                for m in repo.manifests:
                    tags_text = ",".join(m.tags + m.referrer_tags) or "<untagged>"
                    print(f"    {m.digest[:19]}  {tags_text}", file=out)
    failed = any(r.error for inv in inventories.values() for r in inv.repositories)
    return FAILED if failed else OK


def _plan(setup: Setup, args: argparse.Namespace, out: TextIO) -> int:
    policies = setup.select(args.policy)
    if args.inventory is not None:
        try:
            doc = json.loads(args.inventory.read_text(encoding="utf-8"))
            inventories = {inv.registry: inv for inv in
                           (inventory_from_json(d) for d in doc["inventories"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError([Problem(str(args.inventory), 1, 1,
                                       f"cannot read inventory: {exc}")]) from None
        the_plan = plan_all(setup, inventories, policies, now=datetime.now(UTC))
        missing = [n for n in registries_of(policies) if n not in inventories]
        if missing:
            raise UsageError(f"{args.inventory} holds no inventory of registry "
                             f"{', '.join(missing)}")
    else:
        the_plan = _pass(setup, policies, dry_run=True).plan
    _print(to_json(the_plan, mode="dry-run") if args.output == "json" else
           to_table(the_plan, mode="dry-run"), out)
    failed = any(p.aborted or p.errors for p in the_plan.policies)
    return FAILED if failed else OK


def _run(setup: Setup, args: argparse.Namespace, out: TextIO) -> int:
    policies = setup.select(args.policy)
    dry_run = args.dry_run or not setup.config.enforce
    result = _pass(setup, policies, dry_run=dry_run)
    mode = "dry-run" if dry_run else "enforce"
    outcomes = result.report.outcomes
    _print(to_json(result.plan, mode=mode, outcomes=outcomes,
                   run_errors=result.report.errors) if args.output == "json" else
           to_table(result.plan, mode=mode, outcomes=outcomes,
                    run_errors=result.report.errors), out)
    return FAILED if result.failed else OK


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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
    bad = [d for d in args.digest or () if not _DIGEST.fullmatch(d)]
    if bad:
        raise UsageError(f"--digest takes a whole sha256:<64 hex> digest, not {bad[0]!r}")
    state = State.open(setup.config.state_dir)
    if state.path is None:
        raise UsageError("restore reads the journal in state_dir: set state_dir in "
                         f"{args.config} (or make it usable)")

    async def go() -> restore.RestoreReport:
        async with open_clients(setup, sorted(setup.config.registries)) as clients:
            return await restore.restore(clients, state, since=since, digests=args.digest or (),
                                         policies=args.policy or (), dry_run=args.dry_run)

    try:
        report = eventloop.run(go())
    finally:
        state.close()
    _print(restore.to_json(report) if args.output == "json" else
           restore.to_table(report, now=datetime.now(UTC)), out)
    return FAILED if report.failed else OK


def _pass(setup: Setup, policies: tuple[Policy, ...], *, dry_run: bool) -> RunResult:
    state = State.open(setup.config.state_dir)
    try:
        return eventloop.run(run_pass(setup, policies, dry_run=dry_run, state=state))
    finally:
        state.close()


async def _collect(setup: Setup, names: list[str]) -> dict[str, Inventory]:
    state = State.open(setup.config.state_dir)
    try:
        async with open_clients(setup, names) as clients:
            return await collect(clients, state)
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
