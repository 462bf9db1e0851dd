"""GHCR's rules without a server: the planner's last-tagged-version (pure), how GitHub's
rate-limit answers are read, and where the token may go."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from retention.config import Credentials, RegistrySettings
from retention.errors import AuthenticationError, RateLimitExhaustedError
from retention.inventory import Inventory, inventory_from_json, inventory_to_json
from retention.registry.auth import credential_refusal
from retention.registry.ghcr import GhcrClient
from retention.registry.http import AnswerHeaders, Response
from retention.secrets import Secret
from tests.factories import deleted as deleted_names
from tests.factories import inv, make_plan, man, protected
from tests.ghcr_emulator import FakeClock

POLICY = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["pr-*"]
    older_than: 7d
  - untagged: true
"""


def ghcr_inv(*manifests, **kw) -> Inventory:
    inventory = inv(*manifests, **kw)
    return replace(inventory, repositories=tuple(
        replace(r, last_tagged_undeletable=True) for r in inventory.repositories))


def test_a_plan_that_would_empty_a_package_keeps_its_newest_tagged_version():
    p = make_plan(POLICY, ghcr_inv(man("a", "pr-1", days=30), man("b", "pr-2", days=20),
                                   man("c", "pr-3", days=10), man("orphan", days=40)))
    assert deleted_names(p) == {"a", "b", "orphan"}
    assert protected(p) == {"c": "last-tagged-version"}
    # Elsewhere (distribution, ACR) the rule does not apply.
    p = make_plan(POLICY, inv(man("a", "pr-1", days=30), man("c", "pr-3", days=10)))
    assert deleted_names(p) == {"a", "c"}


def test_no_protection_while_another_tagged_version_stays():
    p = make_plan(POLICY, ghcr_inv(man("a", "pr-1", days=30), man("main", "main", days=50)))
    assert deleted_names(p) == {"a"} and protected(p) == {}


def test_the_kept_index_keeps_its_children_and_signature():
    p = make_plan(POLICY, ghcr_inv(
        man("amd"), man("arm"), man("multi", "pr-9", children=("amd", "arm"), days=9,
                                    pushed=None),
        man("old", "pr-1", days=30),
        man("sig", subject="multi", referrer_tags=(f"sha256-{'0' * 64}.sig",))))
    assert deleted_names(p) == {"old"}
    assert protected(p) == {"multi": "last-tagged-version"}


def test_an_ordinary_tag_is_kept_before_a_signature_pushed_later():
    """Referrer tags count as tags for GitHub, but the image is what is kept."""
    image = man("img", "pr-1", days=30)
    sig = man("img-sig", days=1, subject="img", referrer_tags=(f"sha256-{'1' * 64}.sig",))
    p = make_plan(POLICY, ghcr_inv(image, sig))
    assert deleted_names(p) == set() and protected(p) == {"img": "last-tagged-version"}


def test_the_flag_survives_an_inventory_file():
    inventory = ghcr_inv(man("a", "pr-1"))
    again = inventory_from_json(json.loads(json.dumps(inventory_to_json(inventory))))
    assert again.repositories[0].last_tagged_undeletable is True
    doc = inventory_to_json(inv(man("a", "pr-1")))
    del doc["repositories"][0]["last_tagged_undeletable"]  # a file written before
    assert inventory_from_json(doc).repositories[0].last_tagged_undeletable is False


# -- rate limits, as GitHub's answers carry them ------------------------------------------

SETTINGS = RegistrySettings(name="gh", url="https://ghcr.io", type="ghcr", owner="o",
                            api_url="https://api.github.com",
                            credentials=Credentials("o", Secret("ghp_x")))


def answer(status: int, message: str = "", **headers: str) -> Response:
    found = AnswerHeaders.of((k.replace("_", "-"), v) for k, v in headers.items())
    return Response(status, json.dumps({"message": message}).encode(), found)


def limit(*responses: Response, method: str = "GET", now: float = 1_000_000.0):
    """What the API makes of each answer in turn: (limited?, seconds it will wait)."""
    clock = FakeClock(now)
    client = GhcrClient(SETTINGS, wall=clock.time, sleep=clock.sleep)
    github = client.github
    out = []

    async def go():
        for r in responses:
            limited = await github._limit(method, r, {})
            if not limited:
                github._note(r)
            before = clock.now
            await github._turn()
            out.append((limited, round(clock.now - before, 1)))
    asyncio.run(go())
    return out


@pytest.mark.parametrize("status", [403, 429])
def test_primary_limit_waits_until_reset(status):
    assert limit(answer(status, "API rate limit exceeded for user ID 1.",
                        x_ratelimit_remaining="0", x_ratelimit_reset="1000600")) == [(True, 601)]


def test_an_answer_that_spends_the_limit_holds_the_next_request_until_reset():
    assert limit(answer(200, x_ratelimit_remaining="0", x_ratelimit_reset="1000030")) == [
        (False, 31)]
    assert limit(answer(200, x_ratelimit_remaining="1", x_ratelimit_reset="1000030")) == [
        (False, 0)]


def test_secondary_limit_waits_as_told_else_a_minute_then_longer():
    told = answer(403, "You have exceeded a secondary rate limit.", retry_after="42")
    untold = answer(403, "You have exceeded a secondary rate limit.")
    assert limit(told) == [(True, 42)]
    assert limit(untold, untold, untold, method="DELETE") == [(True, 60), (True, 120),
                                                               (True, 240)]
    assert limit(answer(429, "")) == [(True, 60)]  # a 429 is a limit whatever it says


def test_a_403_is_a_limit_only_when_it_says_so():
    assert limit(answer(403, "Must have admin rights to Repository.")) == [(False, 0)]
    assert limit(answer(403, "Resource not accessible by personal access token",
                        x_ratelimit_remaining="4999")) == [(False, 0)]


def test_no_wait_beyond_an_hour():
    with pytest.raises(RateLimitExhaustedError, match="longer than the hour"):
        limit(answer(429, "secondary rate limit", retry_after="3700"))
    with pytest.raises(RateLimitExhaustedError):
        limit(answer(200, x_ratelimit_remaining="0", x_ratelimit_reset="1003700"))


# -- the token's origins -------------------------------------------------------------------


def test_the_token_may_go_to_api_url_and_the_registry_only():
    ghes = replace(SETTINGS, url="https://containers.ghe.example.com",
                   api_url="https://ghe.example.com/api/v3")
    assert credential_refusal("https://ghcr.io/token", SETTINGS) is None
    assert credential_refusal("https://api.github.com/orgs/o/packages", SETTINGS) is None
    assert credential_refusal("https://ghe.example.com/api/v3/orgs/o", ghes) is None
    assert credential_refusal("https://api.github.com/orgs/o", ghes) is not None
    assert credential_refusal("http://api.github.com/orgs/o", SETTINGS) is not None
    assert credential_refusal("https://api.github.com:8443/orgs/o", SETTINGS) is not None
    assert credential_refusal("https://evil.example/orgs/o", SETTINGS) is not None
    # Another registry type never sends its credentials to an api_url it should not have.
    oci = replace(SETTINGS, type="oci", url="https://registry.example.com")
    assert credential_refusal("https://api.github.com/x", oci) is not None


def test_the_api_refuses_to_send_the_token_elsewhere():
    client = GhcrClient(replace(SETTINGS, api_url="https://api.github.com"))

    async def go():
        with pytest.raises(AuthenticationError, match=r"not sent to evil\.example"):
            await client.github.call("GET", "https://evil.example/orgs/o/packages", what="x")
        await client.aclose()
    asyncio.run(go())
