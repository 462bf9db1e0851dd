"""The daemon: scheduled runs, metrics over HTTP, hot reload, SIGHUP and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
from apscheduler.triggers.interval import IntervalTrigger

from retention.daemon import Daemon, DaemonOptions
from tests.pusher import Pusher
from tests.servers import free_port
from tests.test_run_e2e import POLICY, write_config


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


def every_second(**overrides) -> DaemonOptions:
    """Daemon options for tests: every policy runs each second instead of on its cron."""
    return DaemonOptions(**{"poll_interval": 0.1, "ping_interval": 0.2,
                            "trigger": lambda _cron: IntervalTrigger(seconds=1), **overrides})


def runs_by_outcome(daemon: Daemon) -> dict[str, float]:
    """Outcomes that happened (every outcome is exported, at 0 until it happens)."""
    return {s.labels["outcome"]: s.value for m in daemon.metrics.runs.collect()
            for s in m.samples if s.name == "retention_runs_total" and s.value}


def slow_registry(tmp_path: Path, pusher: Pusher, proxy, *, seconds: float, times: int) -> Path:
    """A config whose registry answers tags/list slowly, so a run lasts a while."""
    from tests.servers import Fault

    pusher.image("app", "v1", created="2024-01-01T00:00:00Z")
    proxy.inject(Fault("GET", r"/tags/list", "delay", times=times, seconds=seconds))
    return write_config(tmp_path, proxy.url, extra="listen: 127.0.0.1:0")


def test_scheduled_run_metrics_and_reload(tmp_path: Path, registry, pusher: Pusher):
    first = pusher.image("app", "latest", created="2024-01-01T00:00:00Z", layers=(b"one",))
    config = write_config(tmp_path, registry.url, extra="listen: 127.0.0.1:0")
    async def scenario():
        daemon = Daemon(config, options=every_second())
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        base = f"http://127.0.0.1:{daemon.port}"
        async with httpx2.AsyncClient(base_url=base) as http:
            async def scrape():
                return (await http.get("/metrics")).text

            async def runs_done(n):
                text = await scrape()
                value = metric(text, "retention_runs_total", policy="orphans",
                               outcome="success")
                return text if value is not None and value >= n else None

            await wait_for(lambda: runs_done(1))
            # The first run recorded app:latest; now re-push it and let a run delete the
            # orphan.
            pusher.image("app", "latest", created="2024-02-01T00:00:00Z", layers=(b"two",))

            async def orphan_gone():
                return not pusher.exists("app", first.digest)

            await wait_for(orphan_gone)
            text = await wait_for(lambda: runs_done(3))
            assert metric(text, "retention_manifests_deleted_total", registry="main",
                          policy="orphans") == 1
            assert metric(text, "retention_reclaimed_bytes_total", registry="main",
                          policy="orphans") > 0
            assert metric(text, "retention_policies_loaded") == 1
            assert "_created" not in text  # only the series SPEC names
            assert metric(text, "retention_protected_manifests", registry="main",
                          policy="orphans", reason="pinned") == 0
            assert metric(text, "retention_last_success_timestamp_seconds",
                          policy="orphans") > 0
            assert metric(text, "retention_registry_requests_total", registry="main",
                          method="GET", code="200") > 0
            assert (await http.get("/healthz")).status_code == 200
            assert (await wait_for(lambda: _ready(http))) is True

            # A broken policy is rejected whole; the old one keeps running.
            policy_file = tmp_path / "policies" / "p.yaml"
            policy_file.write_text(POLICY + "  - tags: [on]\n")

            async def rejected():
                return metric(await scrape(), "retention_config_reload_failures_total") == 1

            await wait_for(rejected)
            before = metric(await scrape(), "retention_runs_total", policy="orphans",
                            outcome="success")
            await wait_for(lambda: runs_done(before + 1))
            # A fixed policy with a second one is picked up.
            policy_file.write_text(POLICY + "---\n" + POLICY.replace("name: orphans",
                                                                       "name: second"))

            async def two_loaded():
                return metric(await scrape(), "retention_policies_loaded") == 2

            await wait_for(two_loaded)
        daemon.stopping.set()
        return await task

    assert asyncio.run(scenario()) == 0


async def _ready(http: httpx2.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


def test_failed_run_does_not_stop_the_loop(tmp_path: Path):
    # Nothing listens on this port: every run fails; the daemon goes on and counts them.
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}",
                          extra="listen: 127.0.0.1:0")
    async def scenario():
        daemon = Daemon(config, options=every_second())
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            async def failures():
                text = (await http.get("/metrics")).text
                value = metric(text, "retention_runs_total", policy="orphans",
                               outcome="failure")
                return value is not None and value >= 2

            await wait_for(failures, timeout=30)
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
        daemon.stopping.set()
        return await task

    assert asyncio.run(scenario()) == 0


def test_serve_process_sighup_and_sigterm(tmp_path: Path, registry):
    port = free_port()
    config = write_config(tmp_path, registry.url, extra=f"listen: 127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "retention", "serve", "--config",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx2.get(base + "/readyz").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"daemon not ready: {proc.stderr.read() if proc.poll() else ''}")
        assert httpx2.get(base + "/healthz").status_code == 200
        (tmp_path / "policies" / "p.yaml").write_text("name: [broken\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = httpx2.get(base + "/metrics").text
            if metric(text, "retention_config_reload_failures_total") == 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("reload failure not counted")
        assert metric(text, "retention_policies_loaded") == 1
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        logs = proc.stderr.read()
        assert "configuration rejected" in logs
        assert re.search(r'"event": "daemon stopped"', logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_lets_the_run_in_flight_finish(tmp_path: Path, registry, pusher: Pusher, proxy):
    config = slow_registry(tmp_path, pusher, proxy, seconds=1.5, times=1)

    async def scenario():
        daemon = Daemon(config, options=every_second(ping_interval=60))
        task = asyncio.create_task(daemon.run())

        async def running():
            return bool(daemon._running)

        await wait_for(running)
        daemon.stopping.set()  # what SIGTERM does, while the run waits on the slow registry
        assert await task == 0
        return daemon

    daemon = asyncio.run(scenario())
    assert runs_by_outcome(daemon) == {"success": 1.0}  # finished, not cancelled


def test_stop_mid_run_finishes_the_delete_in_flight_and_starts_no_other(
        tmp_path: Path, registry, pusher: Pusher, proxy):
    import threading

    from tests.servers import Fault

    images = [pusher.image("app", f"pr-{i}", created="2024-01-01T00:00:00Z",
                           layers=(f"layer {i}".encode(),)) for i in range(4)]
    in_flight, release = threading.Event(), threading.Event()

    def hold(method: str, path: str) -> None:
        in_flight.set()  # the first DELETE has reached the registry's door
        release.wait(20)

    proxy.inject(Fault("DELETE", r"/v2/app/manifests/", "hook", hook=hold))
    config = write_config(tmp_path, proxy.url, extra="listen: 127.0.0.1:0")

    async def scenario():
        daemon = Daemon(config, options=every_second(ping_interval=60))
        task = asyncio.create_task(daemon.run())

        async def deleting():
            return in_flight.is_set()

        async def told_to_stop():
            return daemon.stop_deleting.is_set()

        await wait_for(deleting)
        daemon.stopping.set()  # what SIGTERM does, while one DELETE is in flight
        await wait_for(told_to_stop)
        release.set()
        assert await task == 0
        return daemon

    daemon = asyncio.run(scenario())
    assert proxy.count("DELETE", r"/v2/app/manifests/") == 1
    gone = [i for i in images if not pusher.exists("app", i.digest)]
    assert len(gone) == 1  # the DELETE in flight finished; no other was started
    deleted = daemon.metrics.manifests_deleted.labels(registry="main", policy="orphans")
    assert deleted._value.get() == 1
    assert runs_by_outcome(daemon) == {"failure": 1.0}  # the rest was not attempted


def test_runs_of_one_policy_never_overlap(tmp_path: Path, registry, pusher: Pusher, proxy):
    # Every run takes ~2.5 s; the trigger fires every second.
    config = slow_registry(tmp_path, pusher, proxy, seconds=2.5, times=100)

    async def scenario():
        daemon = Daemon(config, options=every_second(ping_interval=60))
        task = asyncio.create_task(daemon.run())
        most = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            most = max(most, len(daemon._running))
            await asyncio.sleep(0.05)
        daemon.stopping.set()
        await task
        return daemon, most

    daemon, most = asyncio.run(scenario())
    assert most == 1
    runs = sum(runs_by_outcome(daemon).values())
    assert 1 <= runs <= 3  # not one per trigger: the skipped triggers coalesced away


def never(_cron: str):
    """A trigger that does not fire during a test: only what the start exports is seen."""
    from apscheduler.triggers.date import DateTrigger

    return DateTrigger(run_date="2999-01-01T00:00:00+00:00")


def test_counters_exported_at_zero_from_start_and_after_reload(tmp_path: Path, registry):
    # Issue 15: a labelled counter that first appears at its post-increment value is
    # invisible to increase(), so the first failure after a start never alerts.
    config = write_config(tmp_path, registry.url, extra="listen: 127.0.0.1:0")

    async def scenario():
        daemon = Daemon(config, options=every_second(trigger=never))
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: asyncio.sleep(0, daemon.port))
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}") as http:
            async def scrape():
                return (await http.get("/metrics")).text

            text = await scrape()
            for outcome in ("success", "failure", "aborted"):
                assert metric(text, "retention_runs_total", policy="orphans",
                              outcome=outcome) == 0
            for name in ("retention_reclaimed_bytes_total", "retention_manifests_deleted_total",
                         "retention_delete_failures_total"):
                assert metric(text, name, registry="main", policy="orphans") == 0, name
            assert metric(text, "retention_run_duration_seconds_count", policy="orphans") == 0
            assert metric(text, "retention_config_reload_failures_total") == 0
            assert "retention_last_success_timestamp_seconds{" not in text  # none yet

            # A reload that adds a policy exports its counters at once too.
            policies = tmp_path / "policies" / "p.yaml"
            policies.write_text(POLICY + "---\n" + POLICY.replace("name: orphans",
                                                                    "name: second"))

            async def second_at_zero():
                t = await scrape()
                return t if metric(t, "retention_runs_total", policy="second",
                                   outcome="failure") == 0 else None

            text = await wait_for(second_at_zero)
            assert metric(text, "retention_delete_failures_total", registry="main",
                          policy="second") == 0
            # A reload that removes a policy drops its series: no alert for a policy
            # that no longer exists.
            policies.write_text(POLICY.replace("name: orphans", "name: second"))

            async def orphans_gone():
                t = await scrape()
                return t if 'policy="orphans"' not in t else None

            text = await wait_for(orphans_gone)
            assert metric(text, "retention_runs_total", policy="second", outcome="success") == 0
        daemon.stopping.set()
        return await task

    assert asyncio.run(scenario()) == 0
