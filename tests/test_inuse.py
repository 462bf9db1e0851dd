"""The in_use config block and the pure part of the in-use protection."""

from __future__ import annotations

from datetime import timedelta

import pytest

from retention.config import load_config
from retention.errors import ConfigError
from retention.inuse import Sighting, Use, explain, protections, resolve
from retention.planner import Options, plan
from retention.references import Hosts
from tests.factories import NOW, deleted, dg, inv, man, policy, protected


def write(tmp_path, in_use: str):
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "kube.yaml").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "contexts: [{name: a, context: {cluster: c, user: u}}, {name: b, context: {cluster: c}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u}]\n")
    path = tmp_path / "retention.yaml"
    path.write_text("registries:\n  main:\n    url: https://r.example.com\n"
                    f"policies: policies\nin_use:\n{in_use}")
    return path


def test_in_use_block(tmp_path):
    config = load_config(write(tmp_path, """\
  keep_for: 2d
  clusters:
    - name: prod
      kubeconfig: kube.yaml
      context: b
      namespaces: [payments]
      min_images: 20
    - name: here
"""))
    assert config.in_use.keep_for == timedelta(days=2)
    prod, here = config.in_use.clusters
    assert (prod.kubeconfig, prod.context, prod.namespaces, prod.min_images) == \
        (tmp_path / "kube.yaml", "b", ("payments",), 20)
    assert (here.kubeconfig, here.context, here.min_images) == (None, None, 1)


@pytest.mark.parametrize(("block", "message"), [
    ("  clusters: []\n", "6:13: in_use.clusters is empty"),
    ("  keep_for: soon\n  clusters: [{name: a}]\n", "6:13: in_use.keep_for:"),
    ("  clusters: [{name: A}]\n", "6:21: in_use.clusters[0].name must match"),
    ("  clusters: [{name: a}, {name: a}]\n", "6:25: in_use.clusters[1]: duplicate cluster"),
    ("  clusters: [{name: a, kubeconfig: nope.yaml}]\n", "6:36: in_use.clusters[0]."
                                                         "kubeconfig: cannot read"),
    ("  clusters: [{name: a, kubeconfig: kube.yaml, context: x}]\n",
     "6:36: in_use.clusters[0]: context 'x' is not in"),
    ("  clusters: [{name: a, context: b}]\n", "6:33: in_use.clusters[0].context needs a "
                                              "kubeconfig"),
    ("  clusters: [{name: a, min_images: -1}]\n", "6:36: in_use.clusters[0].min_images"),
    ("  clusters: [{name: a, label: x}]\n", "6:24: in_use.clusters[0]: unknown key 'label'"),
])
def test_in_use_errors_are_located(tmp_path, block, message):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, block))
    assert any(message in str(p) for p in exc.value.problems), exc.value.problems


HOSTS = Hosts.of([("main", "registry.test:5000", ["pull.example.com"]),
                  ("hub", "registry-1.docker.io", [])])


def test_resolve_tags_digests_aliases_and_docker_hub():
    idx = man("idx", "v1", children=("c1",))
    inventory = inv(man("c1", days=40), idx, man("other", "v2"))
    hub = inv(man("nginx-1", "1.25"), repo="library/nginx")
    hub = hub.__class__(registry="hub", host="registry-1.docker.io",
                        repositories=hub.repositories, collected_at=NOW)
    uses = [Use("prod", "ns", "pod", "a", "PULL.example.com:443/ci/web:v1"),
            Use("prod", "ns", "pod", "a", f"docker-pullable://registry.test:5000/ci/web@{dg('c1')}"),
            Use("prod", "ns", "deployment", "b", "nginx:1.25"),
            Use("prod", "ns", "pod", "c", "registry.test:5000/ci/web:missing"),
            Use("prod", "ns", "pod", "d", "elsewhere.test/ci/web:v2")]
    got = resolve(uses, {"main": inventory, "hub": hub}, HOSTS, now=NOW)
    assert {(s.registry, s.repository, s.digest, s.used_by) for s in got} == {
        ("main", "ci/web", dg("idx"), "prod/ns/pod/a"),
        ("main", "ci/web", dg("c1"), "prod/ns/pod/a"),
        ("hub", "library/nginx", dg("nginx-1"), "prod/ns/deployment/b"),
        # a tag no read has resolved: remembered by name, resolved when it can be
        ("main", "ci/web", "tag:missing", "prod/ns/pod/c")}


def test_protections_widen_and_expire():
    ms = [man("c1", days=40), man("c2", days=40), man("idx", "v1", children=("c1", "c2")),
          man("sig", days=40, subject="idx", referrer_tags=("sha256-x.sig",)),
          man("stale", "v0")]
    inventory = inv(*ms)
    seen = [Sighting("main", "ci/web", dg("c1"), "prod/ns/pod/a", NOW - timedelta(hours=3)),
            Sighting("main", "ci/web", dg("stale"), "prod/ns/pod/b", NOW - timedelta(days=8))]
    got = protections(seen, {"main": inventory}, now=NOW, keep_for=timedelta(days=7))
    details = got[("main", "ci/web")]
    assert set(details) == {dg("c1"), dg("c2"), dg("idx"), dg("sig")}
    assert details[dg("c1")] == "in use by prod/ns/pod/a, last seen 3h ago"
    assert details[dg("idx")] == f"index of {dg('c1')[:19]}, in use by prod/ns/pod/a, " \
                                 "last seen 3h ago"

    text = """
name: p
repositories: {include: ["**"]}
delete:
  - tags: ["v*"]
  - untagged: true
"""
    p = plan(inventory, policy(text), now=NOW, options=Options(in_use=got,
                                                               untagged_grace=timedelta(0)))
    assert protected(p) == {"idx": "in-use"} and deleted(p) == {"stale"}


def test_explain_now():
    s = Sighting("main", "r", dg("x"), "prod/payments/deployment/api", NOW)
    assert explain(s, now=NOW) == "in use by prod/payments/deployment/api, last seen now"
