"""The Helm chart as a platform team meets it: rendered by Helm's own engine (helm-sdkpy's
Install against a stand-in API server), every manifest validated strictly against the
Kubernetes schemas (kubernetes-validate) and the prometheus-operator CRDs, and the rendered
retention.yaml accepted by `retention validate`. The install examples of docs/operations.md
are taken from the doc itself, so they cannot drift from the chart."""

from __future__ import annotations

import io
import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from retention.cli import main
from tests.helm_render import CHART, ROOT, Rendered, RenderError, materialize, render

DOC = ROOT / "docs" / "operations.md"
CRDS = json.loads((ROOT / "tests/data/prometheus-operator-crds.schema.json").read_text())
KUBE = kubernetes_validate.utils.latest_version()

# -- validation ---------------------------------------------------------------------------


def validate_object(obj: dict[str, Any]) -> None:
    if obj["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.Draft202012Validator(CRDS[obj["kind"]]).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBE, strict=True)


def check_rendered(rendered: Rendered, tmp_path: Path) -> None:
    """Every object valid; the config the daemon would read passes `retention validate`."""
    assert rendered.objects, "nothing rendered"
    for obj in rendered.objects:
        try:
            validate_object(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc}") from exc
    posted = sorted((o["kind"], o["metadata"]["name"]) for o in rendered.objects)
    recorded = sorted((d["kind"], d["metadata"]["name"])
                      for d in yaml.safe_load_all(rendered.manifest) if d)
    assert posted == recorded
    if any(o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")
           for o in rendered.objects):
        config = materialize(rendered, tmp_path / "pod")
        out, err = io.StringIO(), io.StringIO()
        code = main(["validate", "--config", str(config)], stdout=out, stderr=err)
        assert code == 0, f"rendered retention.yaml rejected:\n{err.getvalue()}\n" + \
            config.read_text()


# -- the install examples of docs/operations.md ------------------------------------------


def _set(values: dict, path: str, value: Any) -> None:
    keys = [k.replace("\0", ".") for k in path.replace("\\.", "\0").split(".")]
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def _typed(text: str) -> Any:
    """What Helm's --set makes of a value: booleans, integers and null are typed."""
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def doc_examples() -> list[tuple[str, dict]]:
    """Each `helm install`/`helm upgrade` in the doc, with its values: -f FILE names a yaml
    block of the doc whose first line is `# FILE` (so does --set-file KEY=FILE); --set and
    --set-string are applied as Helm does."""
    text = DOC.read_text()
    files = {m.group(1): m.group(2) for m in
             re.finditer(r"```yaml\n# ([\w.-]+\.yaml)\n(.*?)```", text, re.S)}
    examples = []
    for block in re.findall(r"```(?:sh|shell|bash)\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] not in (["helm", "install"], ["helm", "upgrade"]):
                continue
            values: dict = {}
            args = iter(words[2:])
            for word in args:
                if word in ("-f", "--values"):
                    name = next(args)
                    assert name in files, f"{command}: no yaml block '# {name}' in the doc"
                    values = _merge(values, yaml.safe_load(files[name]))
                elif word in ("--set", "--set-string", "--set-file"):
                    key, _, value = next(args).partition("=")
                    if word == "--set-file":
                        assert value in files, f"{command}: no yaml block '# {value}'"
                        value = files[value]
                    _set(values, key, _typed(value) if word == "--set" else value)
                elif word in ("-n", "--namespace", "--version"):
                    next(args)
            examples.append((command.strip(), values))
    return examples


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


EXAMPLES = doc_examples()


def test_the_doc_has_install_examples():
    assert len(EXAMPLES) >= 3, EXAMPLES
    assert any("-f " in command for command, _ in EXAMPLES)


@pytest.mark.parametrize("values", [v for _, v in EXAMPLES], ids=[c for c, _ in EXAMPLES])
def test_doc_install_example_renders_valid(tmp_path: Path, values: dict):
    check_rendered(render(values), tmp_path)


@pytest.mark.parametrize("name", sorted(p.name for p in (CHART / "ci").glob("*.yaml")))
def test_ci_values_render_valid(tmp_path: Path, name: str):
    check_rendered(render(yaml.safe_load((CHART / "ci" / name).read_text())), tmp_path)


# -- what a user gets ---------------------------------------------------------------------

MINIMAL = {
    "registries": {"prod": {"url": "https://registry.prod.example.com"}},
    "policies": {"files": {"ci.yaml": "name: ci\nrepositories: {include: ['ci/**']}\n"
                                      "delete: [{tags: ['pr-*'], older_than: 14d}]\n"}},
}


@cache
def minimal() -> Rendered:
    return render(MINIMAL)


def test_user_values_are_exactly_what_is_configured(tmp_path: Path):
    # Issue 15: defaults merged `registries.main` and the untagged-orphans policy into
    # what the user configured.
    rendered = minimal()
    check_rendered(rendered, tmp_path)
    config = yaml.safe_load(rendered.one("ConfigMap", "-config")["data"]["retention.yaml"])
    assert list(config["registries"]) == ["prod"]
    assert config["mode"] == "dry-run"
    assert list(rendered.one("ConfigMap", "-policies")["data"]) == ["ci.yaml"]


def test_no_registry_fails_with_a_clear_message():
    with pytest.raises(RenderError, match=r"registries: no registry is configured"):
        render({"policies": MINIMAL["policies"]})


def test_no_policy_fails_with_a_clear_message():
    with pytest.raises(RenderError, match=r"policies: no policy is configured"):
        render({"registries": MINIMAL["registries"]})


def test_git_sync_with_policy_files_is_an_error():
    values = {**MINIMAL, "gitSync": {"enabled": True, "repo": "https://git.example.com/p"}}
    with pytest.raises(RenderError, match=r"with gitSync.enabled the policies come from git"):
        render(values)


@pytest.mark.parametrize("extra", [
    {"credentials": {"existingSecret": "registry-robot"}},  # what the doc used to say
    {"registries": {"prod": {"url": "https://r.example.com", "existingSecret": "s",
                             "passwrodKey": "pw"}}},
    {"serviceMonitor": {"enabled": True, "intervall": "30s"}},
    {"config": {"mode": "dry-run", "maxDeletion": 5}},
    {"persistence": {"enabled": True, "sise": "2Gi"}},
])
def test_values_schema_rejects_unknown_keys(extra: dict):
    with pytest.raises(RenderError, match=r"(?i)additional propert"):
        render(_merge(MINIMAL, extra))


def test_every_object_of_the_schema_is_closed():
    # additionalProperties false at every level that lists its properties.
    def walk(node: dict, where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], where + ".*")

    walk(json.loads((CHART / "values.schema.json").read_text()), "values")


def test_pod_labels_and_no_api_token():
    rendered = minimal()
    deployment = rendered.one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
        assert key in labels, key
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False
    # Without a ServiceAccount of the chart's own, the pod still mounts no token.
    other = render(_merge(MINIMAL, {"serviceAccount": {"create": False, "name": "shared"}}))
    spec = other.one("Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "shared"
    assert spec["automountServiceAccountToken"] is False
    assert "ServiceAccount" not in other.kinds()


def test_credentials_are_mounted_where_the_config_reads_them(tmp_path: Path):
    values = _merge(MINIMAL, {"registries": {"prod": {
        "username": "robot", "existingSecret": "registry-robot", "caSecret": "registry-ca"}}})
    rendered = render(values)
    check_rendered(rendered, tmp_path)  # materialize() asserts each file is on a mount
    config = yaml.safe_load(rendered.one("ConfigMap", "-config")["data"]["retention.yaml"])
    assert config["registries"]["prod"]["password_file"] == \
        "/var/run/secrets/retention/prod/password"
    volumes = rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "secret-prod", "secret": {"secretName": "registry-robot"}} in volumes


def test_listen_on_pod_ip_binds_the_downward_api_address():
    # Issue 30: how to bind the endpoints to the pod IP. By default the chart's config says
    # 0.0.0.0; with service.listenOnPodIP the kubelet expands $(POD_IP) in the args.
    def container(rendered: Rendered) -> dict:
        return rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]

    default = container(minimal())
    assert "--listen" not in default["args"]
    assert "POD_IP" not in [e["name"] for e in default["env"]]
    chosen = container(render(_merge(MINIMAL, {"service": {"listenOnPodIP": True,
                                                           "port": 9102}})))
    assert chosen["args"][-2:] == ["--listen", "$(POD_IP):9102"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} \
        in chosen["env"]
    validate_object(render(_merge(MINIMAL, {"service": {"listenOnPodIP": True}}))
                    .one("Deployment"))


def test_github_container_registry_takes_its_token_from_a_secret(tmp_path: Path):
    def only(registry: dict) -> dict:
        return {"registries": {"gh": registry}, "policies": MINIMAL["policies"]}

    values = only({"url": "https://ghcr.io", "owner": "my-org",
                   "existingSecret": "github-token", "tokenKey": "pat"})
    rendered = render(values)
    check_rendered(rendered, tmp_path)  # the token file is on the Secret's mount
    config = yaml.safe_load(rendered.one("ConfigMap", "-config")["data"]["retention.yaml"])
    gh = config["registries"]["gh"]
    assert gh["token_file"] == "/var/run/secrets/retention/gh/pat"
    assert (gh["owner"], gh["owner_type"]) == ("my-org", "org")
    assert "password_file" not in gh and "username" not in gh
    volumes = rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "secret-gh", "secret": {"secretName": "github-token"}} in volumes
    ghes = render(only({"url": "https://containers.ghe.example.com", "type": "ghcr",
                        "owner": "me", "ownerType": "user",
                        "apiUrl": "https://ghe.example.com/api/v3",
                        "existingSecret": "github-token"}))
    check_rendered(ghes, tmp_path / "ghes")
    gh = yaml.safe_load(ghes.one("ConfigMap", "-config")["data"]["retention.yaml"]
                        )["registries"]["gh"]
    assert (gh["api_url"], gh["owner_type"], gh["token_file"]) == (
        "https://ghe.example.com/api/v3", "user", "/var/run/secrets/retention/gh/token")
    with pytest.raises(RenderError, match=r"registries.gh.existingSecret is required"):
        render(only({"url": "https://ghcr.io", "owner": "my-org"}))
