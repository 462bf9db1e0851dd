"""Collecting inventories from the configured registries, and planning on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import httpx

from retention.config import RegistrySettings
from retention.inventory import Inventory
from retention.planner import Plan, plan
from retention.policy import Policy
from retention.registry.client import Observer, RegistryClient, RetryPolicy
from retention.scanner import FactsCache, Scanner
from retention.setup import Setup

TransportFactory = Callable[[RegistrySettings], httpx.AsyncBaseTransport | None]


def registries_of(setup: Setup, policies: Iterable[Policy]) -> list[str]:
    return sorted({p.registry for p in policies if p.registry is not None})


async def collect(
    setup: Setup,
    registries: Iterable[str],
    *,
    cache: FactsCache | None = None,
    observe: Callable[[str], Observer] | None = None,
    transport: TransportFactory | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, Inventory]:
    """Scan each registry; they are independent, so they are scanned at once."""

    async def one(name: str) -> Inventory:
        settings = setup.config.registries[name]
        async with RegistryClient(
            settings,
            transport=transport(settings) if transport else None,
            observe=observe(name) if observe else None,
            retry=retry,
        ) as client:
            return await Scanner(client, cache=cache).scan()

    names = list(registries)
    inventories = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, inventories, strict=True))


def plan_all(
    setup: Setup,
    inventories: Mapping[str, Inventory],
    policies: Iterable[Policy],
    *,
    now: datetime,
) -> Plan:
    """One plan over every registry, each policy planned against its registry."""
    by_registry: dict[str, list[Policy]] = {}
    for p in policies:
        if p.registry is not None:
            by_registry.setdefault(p.registry, []).append(p)
    parts = [
        plan(inventories[name], chosen, now=now, options=setup.planner_options())
        for name, chosen in sorted(by_registry.items())
        if name in inventories
    ]
    merged = sorted((pp for part in parts for pp in part.policies), key=lambda pp: pp.policy)
    return Plan(now=now, policies=tuple(merged))
