"""Property: for any listing in which some page fails, the plan deletes nothing in that
repository. Over page sizes, failure positions and kinds of failure, against a stub transport
that pages a repository's tags the way registries do (``n``, ``last``, ``Link``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from urllib.parse import parse_qs, urlsplit

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.config import RegistrySettings
from retention.registry.client import RegistryClient, RetryPolicy
from retention.scanner import MemoryCache, Scanner
from tests.factories import make_plan
from tests.loopback import serving

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Every tagged manifest matches tags: ["*"], every untagged one untagged: true: with a
# complete listing everything in the repository is planned for deletion.
POLICY = """
name: everything
repositories: {include: ["**"]}
delete:
  - tags: ["*"]
  - untagged: true
"""
PROPERTY = settings(max_examples=int(os.environ.get("RETENTION_PROPERTY_EXAMPLES", "150")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAILURES = ["404", "500", "403", "400", "429", "garbled", "no-key", "loop", "offsite"]


def _blob(text: str) -> tuple[str, bytes]:
    data = text.encode()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


class StubRegistry:
    """One repository, ``app``: tagged and untagged images, tags paged ``page_size`` at a
    time; page number ``fail_at`` (1-based) fails with ``failure``."""

    def __init__(self, tagged: int, untagged: int, page_size: int, fail_at: int | None,
                 failure: str):
        self.page_size, self.fail_at, self.failure = page_size, fail_at, failure
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        for i in range(tagged + untagged):
            digest = self._image(i)
            if i < tagged:
                self.tags[f"t{i:03d}"] = digest
        self.untagged = set(self.manifests) - set(self.tags.values())

    def _image(self, i: int) -> str:
        config_digest, config = _blob(json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"i": str(i)}}}))
        self.blobs[config_digest] = config
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
            "size": len(config)}, "layers": []}).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = body
        return digest

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/v2/app/tags/list":
            return self._tags(request)
        if path.startswith("/v2/app/manifests/"):
            reference = path.rsplit("/", 1)[1]
            digest = self.tags.get(reference, reference)
            body = self.manifests.get(digest)
            if body is None:
                return httpx2.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            return httpx2.Response(200, content=b"" if request.method == "HEAD" else body,
                                   headers={"Docker-Content-Digest": digest,
                                            "Content-Type": OCI_MANIFEST})
        if path.startswith("/v2/app/blobs/"):
            data = self.blobs.get(path.rsplit("/", 1)[1])
            return httpx2.Response(200, content=data) if data else httpx2.Response(404)
        return httpx2.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})

    def _tags(self, request: httpx2.Request) -> httpx2.Response:
        query = parse_qs(urlsplit(str(request.url)).query)
        n = min(int(query.get("n", [self.page_size])[0]), self.page_size)
        last = query.get("last", [None])[0]
        names = sorted(self.tags)
        rest = [t for t in names if last is None or t > last]
        page = 1 + (len(names) - len(rest)) // self.page_size
        doc: dict = {"name": "app", "tags": rest[:n]}
        headers = {}
        if len(rest) > n:
            headers["Link"] = f'</v2/app/tags/list?last={rest[n - 1]}&n={n}>; rel="next"'
        if page == self.fail_at:
            kind = self.failure
            if kind.isdigit():
                return httpx2.Response(int(kind), json={"errors": [{"code": "INJECTED"}]},
                                       headers={"Retry-After": "0"})
            if kind == "garbled":
                return httpx2.Response(200, content=json.dumps(doc).encode()[:-7],
                                       headers=headers)
            if kind == "no-key":
                return httpx2.Response(200, json={"name": "app"}, headers=headers)
            if kind == "loop":
                headers["Link"] = f'</v2/app/tags/list?n={n}>; rel="next"'
            if kind == "offsite":
                headers["Link"] = '<https://elsewhere.test/v2/app/tags/list>; rel="next"'
        return httpx2.Response(200, json=doc, headers=headers)


def scan_and_plan(stub: StubRegistry):
    # "gone" (answered 404: no such repository) keeps a 403 on app from being "every
    # repository refused", which is a registry-wide error before any planning.
    async def go():
        async def no_sleep(_s: float) -> None:
            return None

        async with serving(stub.handle) as url, \
                RegistryClient(RegistrySettings(name="main", url=url,
                                                repositories=("app", "gone")),
                               retry=RetryPolicy(attempts=2), sleep=no_sleep) as client:
            # The state knew every digest: a manifest whose tag was on a lost page would
            # be found through it, untagged.
            scanner = Scanner(client, cache=MemoryCache(),
                              known_digests=lambda _repo: sorted(stub.manifests))
            return await scanner.scan()

    inventory = asyncio.run(go())
    return inventory, make_plan(POLICY, inventory)


def planned_in_app(plan) -> set[str]:
    return {a.digest for pp in plan.policies for a in pp.actions if a.repository == "app"}


@PROPERTY
@given(tagged=st.integers(1, 12), untagged=st.integers(0, 3), page_size=st.integers(1, 5),
       data=st.data())
def test_a_failed_page_means_no_deletion_in_that_repository(tagged, untagged, page_size,
                                                            data):
    pages = -(-tagged // page_size)
    fail_at = data.draw(st.integers(1, pages), label="fail_at")
    failures = [f for f in FAILURES if not (fail_at == 1 and f == "404")]
    # A Link can only be bent on a page that has one.
    if fail_at == pages:
        failures = [f for f in failures if f not in ("loop", "offsite")]
    failure = data.draw(st.sampled_from(failures), label="failure")
    stub = StubRegistry(tagged, untagged, page_size, fail_at, failure)
    inventory, plan = scan_and_plan(stub)
    repo = next(r for r in inventory.repositories if r.name == "app")
    assert repo.error is not None
    assert planned_in_app(plan) == set()


@PROPERTY
@given(tagged=st.integers(1, 12), untagged=st.integers(0, 3), page_size=st.integers(1, 5))
def test_a_complete_listing_is_planned_whole(tagged, untagged, page_size):
    """The other side: the stub and the policy do plan deletions when nothing fails, so the
    property above is not empty."""
    stub = StubRegistry(tagged, untagged, page_size, None, "")
    inventory, plan = scan_and_plan(stub)
    assert all(r.error is None for r in inventory.repositories)
    assert planned_in_app(plan) == set(stub.manifests)
