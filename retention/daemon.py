"""The daemon: policies on cron schedules, hot reload, metrics and health over HTTP.

Each policy is one APScheduler job (max_instances=1, coalesce, misfire grace), so two runs of
one policy never overlap and missed runs collapse into one. Configuration, policy and
allowlist files are polled for changes and re-read on SIGHUP; a version that does not
validate is rejected whole and the running one stays. SIGTERM stops scheduling, lets the
deletion in flight finish (no new one starts), and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from retention import eventloop, logs
from retention.allowlist import allowlist_files
from retention.endpoints import EndpointServer, bind_error
from retention.errors import ConfigError, RetentionError
from retention.metrics import Metrics
from retention.policy import Policy, policy_dirs, policy_files
from retention.runs import Connections, make_client, run_pass
from retention.setup import Setup, load_setup
from retention.state import State

log = structlog.get_logger("retention.daemon")

TriggerFactory = Callable[[str], BaseTrigger]


def cron_trigger(expression: str) -> BaseTrigger:
    return CronTrigger.from_crontab(expression, timezone="UTC")


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    poll_interval: float = 5.0  # seconds between checks of the watched files
    ping_interval: float = 60.0  # seconds between registry pings for /readyz
    shutdown_grace: float = 60.0  # how long SIGTERM waits for a run to finish its deletion
    misfire_grace: int = 3600  # a run missed by less than this still happens, once
    # The HTTP endpoints (retention/endpoints.py): a client's whole exchange must be done this
    # long after it connected, and at most this many connections are open at once.
    request_timeout: float = 5.0
    max_connections: int = 64
    trigger: TriggerFactory = cron_trigger


class Daemon:
    def __init__(self, config_path: Path, *, metrics: Metrics | None = None,
                 options: DaemonOptions | None = None, connections: Connections | None = None,
                 err: TextIO | None = None, log_level: str | None = None,
                 listen: tuple[str, int] | None = None):
        self.config_path = config_path
        self.log_level = log_level or "info"
        self.listen = listen  # `serve --listen`, over the config's listen
        self.metrics = metrics or Metrics()
        self.options = options or DaemonOptions()
        self.connections = connections
        self.err = err
        self.setup: Setup | None = None
        self.state: State | None = None
        self.stopping = asyncio.Event()
        self.stop_deleting = asyncio.Event()
        self.registry_ok: dict[str, bool] = {}
        self.heartbeat = time.monotonic()
        self.port: int | None = None
        self._fingerprint: tuple = ()
        self._reload_requested = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._locks: dict[str, asyncio.Lock] = {}  # per policy, and per "registry:<name>"
        self._scheduler: AsyncIOScheduler | None = None
        self._http: EndpointServer | None = None
        self._redactor: logs.Redactor | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            setup = load_setup(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=self.err)
            print("retention: the configuration is invalid; not starting", file=self.err)
            return 2
        self._redactor = logs.configure(fmt=setup.config.log_format or "auto",
                                        stream=self.err, level=self.log_level,
                                        secrets=setup.secrets())
        # Listen first: a port another process holds ends the start before the state is
        # touched. Exit 1, not 2: the configuration is valid, the machine refuses it now.
        host, port = self.listen or setup.config.listen
        self._http = EndpointServer(self._answer, timeout=self.options.request_timeout,
                                    max_connections=self.options.max_connections)
        try:
            self.port = await self._http.start(host, port)
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            print(f"retention: listen {shown}:{port}: {bind_error(exc)}", file=self.err)
            return 1
        self.state = State.open(setup.config.state_dir)
        self._apply(setup)
        self._scheduler = AsyncIOScheduler(timezone="UTC", job_defaults={
            "coalesce": True, "max_instances": 1,
            "misfire_grace_time": self.options.misfire_grace})
        self._schedule()
        self._scheduler.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        log.info("daemon started", policies=len(setup.policies), mode=setup.config.mode,
                 listen=f"{host}:{self.port}")
        background = [asyncio.create_task(self._watch()), asyncio.create_task(self._pings())]
        await self.stopping.wait()
        await self._shutdown(background)
        return 0

    async def _shutdown(self, background: list[asyncio.Task]) -> None:
        log.info("daemon stopping", running=len(self._running))
        if self._scheduler is not None:
            self._scheduler.pause()  # no new runs; shutdown() would cancel the running ones
        self.stop_deleting.set()  # the deletion in flight finishes; no new one starts
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=self.options.shutdown_grace)
            for task in pending:
                log.warning("run cancelled at shutdown", grace_s=self.options.shutdown_grace)
                task.cancel()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for task in background:
            task.cancel()
        if self._http is not None:
            await self._http.close()
        if self.state is not None:
            self.state.close()
        log.info("daemon stopped")

    # -- configuration ------------------------------------------------------------------------

    def _watched(self, setup: Setup) -> list[Path]:
        files = [setup.config.path, *policy_files([setup.config.policies])]
        files.extend(policy_dirs(setup.config.policies))  # a new file changes its directory
        if setup.config.allowlist is not None:
            files.extend(allowlist_files(setup.config.allowlist))
        return files

    def _fingerprint_of(self, setup: Setup) -> tuple:
        try:
            watched = self._watched(setup)
        except OSError as exc:  # a directory that cannot be listed: the reload will say so
            return (("cannot list", exc.filename, exc.errno),)
        out = []
        for path in watched:
            try:
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((str(path), None))
        return tuple(out)

    def _apply(self, setup: Setup) -> None:
        self.setup = setup
        self._fingerprint = self._fingerprint_of(setup)
        self.metrics.policies_loaded.set(len(setup.policies))
        # Every counter of every configured policy at 0 from now, so increase() sees the
        # first failure after a start or after a reload added the policy (SPEC, Metrics).
        self.metrics.configure((p.name, p.registry) for p in setup.policies)
        self.metrics.configure_registries(setup.config.registries)
        for cluster in setup.config.in_use.clusters if setup.config.in_use else ():
            self.metrics.in_use_read_failures.labels(cluster.name)  # exported at 0
        if self._redactor is not None:
            self._redactor.set_secrets(setup.secrets())

    def reload(self) -> bool:
        """Re-read everything; keep the running configuration if the new one is invalid."""
        try:
            setup = load_setup(self.config_path)
        except ConfigError as exc:
            return self._rejected([str(p) for p in exc.problems])
        except Exception as exc:  # see _rejected
            # Not a located problem but a failure to read (a case no check foresaw): still a
            # rejected reload. The message, not the repr: a UnicodeDecodeError's repr holds
            # the bytes it could not decode, which may be a secret's.
            return self._rejected([f"{self.config_path}: reading it failed: "
                                   f"{type(exc).__name__}: {exc}"], exc_info=True)
        old = self.setup
        if old is not None and ((old.config.listen != setup.config.listen and not self.listen)
                                or old.config.state_dir != setup.config.state_dir):
            log.warning("listen and state_dir changes take effect on restart")
        self._apply(setup)
        self._schedule()
        log.info("configuration reloaded", policies=len(setup.policies),
                 mode=setup.config.mode)
        return True

    def _rejected(self, problems: list[str], *, exc_info: bool = False) -> bool:
        """A reload that failed, for whatever reason, is logged and counted, and the running
        configuration stays; the files are read again at their next change or SIGHUP. Issue
        25: one that raised anything but ConfigError killed the watch loop silently, so
        later fixes were never read and /healthz went `stalled`."""
        self.metrics.config_reload_failures.inc()
        log.error("configuration rejected", problems=problems,
                  consequence="the previous configuration stays active", exc_info=exc_info)
        if self.setup is not None:
            self._fingerprint = self._fingerprint_of(self.setup)
        return False

    def _schedule(self) -> None:
        assert self._scheduler is not None and self.setup is not None
        wanted = {f"policy:{p.name}": p for p in self.setup.policies}
        for job in self._scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for job_id, policy in wanted.items():
            cron = policy.schedule or self.setup.config.schedule
            self._scheduler.add_job(self._job, self.options.trigger(cron), id=job_id,
                                    args=[policy.name], replace_existing=True,
                                    name=f"{policy.name} ({cron})")

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._reload_requested.wait(),
                                       timeout=self.options.poll_interval)
                requested = True
            except TimeoutError:
                requested = False
            try:
                if requested:
                    self._reload_requested.clear()
                    log.info("reload requested")
                    self.reload()
                elif self.setup is not None and \
                        self._fingerprint_of(self.setup) != self._fingerprint:
                    log.info("configuration files changed")
                    self.reload()
            except Exception as exc:  # this loop must live: /healthz reports on it
                self._rejected([f"reload failed: {type(exc).__name__}: {exc}"], exc_info=True)
            self.heartbeat = time.monotonic()

    async def _pings(self) -> None:
        while True:
            setup = self.setup
            if setup is not None:
                for name, settings in setup.config.registries.items():
                    try:
                        async with make_client(settings, metrics=self.metrics,
                                               connections=self.connections) as client:
                            await client.ping()
                        self.registry_ok[name] = True
                    except RetentionError as exc:
                        if self.registry_ok.get(name, True):
                            log.error("registry unreachable", registry=name, error=str(exc))
                        self.registry_ok[name] = False
            await asyncio.sleep(self.options.ping_interval)

    # -- runs -------------------------------------------------------------------------------

    async def _job(self, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await self.run_policy(name)
        finally:
            self._running.discard(task)

    async def run_policy(self, name: str) -> None:
        """One run of one policy. Never raises: the loop survives a failed run."""
        setup, state = self.setup, self.state
        policy: Policy | None = next((p for p in setup.policies if p.name == name), None) \
            if setup else None
        if setup is None or state is None or policy is None:
            return
        if state.unusable is not None:
            state = self._reopen_state(setup, state)
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            log.warning("run skipped: the previous run of this policy is still going",
                        policy=name)
            return
        # One run at a time per registry too: two policies planning and deleting at once on
        # the same registry would each plan against a registry the other is changing.
        registry_lock = self._locks.setdefault(f"registry:{policy.registry}", asyncio.Lock())
        async with lock, registry_lock:
            started = time.monotonic()
            log.info("run started", policy=name, dry_run=not setup.config.enforce)
            try:
                result = await run_pass(setup, [policy], dry_run=not setup.config.enforce,
                                        state=state, metrics=self.metrics,
                                        connections=self.connections, stop=self.stop_deleting)
            except RetentionError as exc:
                self.metrics.runs.labels(name, "failure").inc()
                self.metrics.run_duration.labels(name).observe(time.monotonic() - started)
                log.error("run failed", policy=name, error=str(exc))
                return
            except Exception as exc:  # a bug must not kill the daemon: log it, go on
                self.metrics.runs.labels(name, "failure").inc()
                log.exception("run crashed", policy=name, error=repr(exc))
                return
            summary = result.report
            log.info("run finished", policy=name, outcome=result.policy_outcome(name),
                     planned=len(result.plan.actions), failed=summary.failed,
                     seconds=round(time.monotonic() - started, 3))

    def _reopen_state(self, setup: Setup, state: State) -> State:
        """The state database could not be used: try it again, so that runs succeed again
        once an operator has moved the bad file aside (each run until then fails)."""
        fresh = State.open(setup.config.state_dir)
        if fresh.unusable is not None:
            fresh.close()
            return state
        log.info("state usable again", path=str(fresh.path))
        # The in-memory stand-in is left to runs still using it; nothing in it is durable.
        self.state = fresh
        return fresh

    # -- HTTP -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        return time.monotonic() - self.heartbeat < max(60.0, 3 * self.options.poll_interval)

    def ready(self) -> bool:
        if self.setup is None:
            return False
        return all(self.registry_ok.get(name) is True for name in self.setup.config.registries)

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            ok = self.healthy()
            return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", b"stalled\n")
        if path == "/readyz":
            ok = self.ready()
            return (200, "text/plain", b"ready\n") if ok else \
                (503, "text/plain", b"not ready\n")
        return 404, "text/plain", b"not found\n"


def serve(config_path: Path, *, err: TextIO | None = None, log_level: str | None = None,
          listen: tuple[str, int] | None = None) -> int:
    return eventloop.run(Daemon(config_path, err=err, log_level=log_level,
                                listen=listen).run())
