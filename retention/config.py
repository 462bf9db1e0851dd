"""The daemon configuration, ``retention.yaml``: registries, paths, mode and limits."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from retention.errors import ConfigError, Problem
from retention.names import is_repository, not_canonical
from retention.references import Hosts, normalize_host
from retention.registry.tls import pem_problem
from retention.secrets import Secret
from retention.textfiles import read_text
from retention.yamlnodes import Reader, compose_documents

MODES = ("dry-run", "enforce")
REGISTRY_TYPES = ("oci", "acr", "ghcr")
GHCR_HOST = "ghcr.io"
GITHUB_API = "https://api.github.com"
OWNER_TYPES = ("org", "user")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: Secret = field(repr=False)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    name: str
    url: str  # scheme://host[:port], no trailing slash
    type: str = "oci"
    credentials: Credentials | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    token_hosts: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()
    concurrency: int = 8
    aliases: tuple[str, ...] = ()  # other host names clients pull this registry by
    # GitHub Container Registry (type ghcr): whose packages, and where GitHub's REST API is.
    # The token is ``credentials.password`` (the same credentials read through ghcr.io).
    owner: str = ""
    owner_type: str = "org"  # org or user
    api_url: str = ""  # scheme://host[/api/v3], no trailing slash

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A Kubernetes cluster whose workloads' images are protected (``in_use.clusters``)."""

    name: str
    kubeconfig: Path | None = None  # None: the in-cluster service account
    context: str | None = None  # None: the kubeconfig's current context
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    min_images: int = 1  # fewer image references read: the cluster counts as unreadable


@dataclass(frozen=True, slots=True)
class InUseSettings:
    keep_for: timedelta = timedelta(days=30)
    clusters: tuple[ClusterSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    registries: dict[str, RegistrySettings]
    policies: Path
    allowlist: Path | None = None
    mode: str = "dry-run"
    schedule: str = "0 3 * * *"
    untagged_grace: timedelta = timedelta(hours=24)
    journal_keep: timedelta = timedelta(days=30)  # how long deleted manifests' bodies stay
    # How long a manifest `retention restore` put back is protected (`restored`).
    restored_hold: timedelta = timedelta(days=7)
    # The longest time from the start of the read confirming a manifest's tags to its DELETE
    confirm_window: timedelta = timedelta(seconds=2)
    max_deletions: int = 1000
    state_dir: Path | None = None
    listen: tuple[str, int] = ("0.0.0.0", 9090)  # noqa: S104 - a container's metrics port
    # None: unset, json unless the output is a terminal; a written value always wins.
    log_format: str | None = None
    in_use: InUseSettings | None = None
    # Repositories with retention_repository_bytes series of their own (the largest by
    # unique bytes); the rest are summed as (other), so cardinality stays bounded.
    repository_metrics_top: int = 50

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    def hosts(self) -> Hosts:
        """Which registry each host name (URL host or alias) belongs to."""
        return Hosts.of((r.name, r.host, r.aliases) for r in self.registries.values())


_TOP_KEYS = {
    "registries": True,
    "policies": True,
    "allowlist": False,
    "mode": False,
    "schedule": False,
    "untagged_grace": False,
    "journal_keep": False,
    "restored_hold": False,
    "confirm_window": False,
    "max_deletions": False,
    "state_dir": False,
    "listen": False,
    "log_format": False,
    "repository_metrics_top": False,
    "in_use": False,
}
_IN_USE_KEYS = {"keep_for": False, "clusters": True}
_CLUSTER_KEYS = {"name": True, "kubeconfig": False, "context": False, "namespaces": False,
                 "min_images": False}
_CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_REGISTRY_KEYS = {
    "url": True,
    "type": False,
    "username": False,
    "username_env": False,
    "password_file": False,
    "password_env": False,
    "docker_config": False,
    "ca_file": False,
    "insecure_skip_verify": False,
    "token_hosts": False,
    "repositories": False,
    "concurrency": False,
    "aliases": False,
    "owner": False,
    "owner_type": False,
    "api_url": False,
    "token_file": False,
    "token_env": False,
}
_GHCR_KEYS = ("owner", "owner_type", "api_url", "token_file", "token_env")
# A GitHub login: letters, digits and single hyphens inside, at most 39 characters.
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")


def check_cron(reader: Reader, node: yaml.Node, *, what: str) -> str | None:
    text = reader.string(node, what=what)
    if text is None:
        return None
    # Imported here: APScheduler (and importlib.metadata under it) costs ~20 ms, which every
    # `plan` would pay before its first request while the registry waits.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        reader.error(node, f"{what}: invalid cron expression {text!r} ({exc}); "
                     "write five fields: minute hour day month weekday")
        return None
    return text


def load_config(path: str | os.PathLike[str], *, environ: dict[str, str] | None = None) -> Config:
    """Read and validate ``retention.yaml``; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    path = Path(path)
    shown = str(path)
    try:
        text = read_text(path)
    except OSError as exc:
        raise ConfigError([Problem(shown, 1, 1, f"cannot read config: {exc.strerror}")]) from None
    problems: list[Problem] = []
    docs = compose_documents(text, shown, problems)
    reader = Reader(shown, problems)
    if not problems and len(docs) != 1:
        reader.error(docs[1] if docs else None, "the config must be exactly one YAML document")
    if problems:
        raise ConfigError(problems)
    base = path.parent
    top = reader.mapping(docs[0], what="config", allowed=_TOP_KEYS)
    if top is None:
        raise ConfigError(problems)

    registries: dict[str, RegistrySettings] = {}
    if "registries" in top:
        node = top["registries"]
        if not isinstance(node, yaml.MappingNode):
            reader.error(node, "registries must be a mapping of names to registry settings")
        else:
            seen: set[str] = set()
            for key_node, value_node in node.value:
                name = reader.string(key_node, what="registry name")
                if name is None:
                    continue
                if name in seen:
                    reader.error(key_node, f"duplicate registry {name!r}")
                    continue
                seen.add(name)
                settings = _registry(reader, name, value_node, base, env)
                if settings is not None:
                    registries[name] = settings
            if not node.value:
                reader.error(node, "registries is empty; configure at least one registry")
            _check_hosts_unique(reader, node, registries)

    def path_of(key: str) -> Path | None:
        if key not in top:
            return None
        text = reader.string(top[key], what=key)
        return (base / text) if text else None

    policies = path_of("policies")
    allowlist = path_of("allowlist")
    if allowlist is not None and not allowlist.exists():
        reader.error(top["allowlist"], f"allowlist {allowlist} does not exist")
    if policies is not None and not policies.exists():
        reader.error(top["policies"], f"policies path {policies} does not exist")

    kwargs: dict[str, object] = {}
    if "mode" in top:
        mode = reader.string(top["mode"], what="mode", expected="dry-run or enforce")
        if mode is not None and mode not in MODES:
            reader.error(top["mode"], f"mode must be dry-run or enforce, not {mode!r}")
        elif mode is not None:
            kwargs["mode"] = mode
    if "schedule" in top and (cron := check_cron(reader, top["schedule"], what="schedule")):
        kwargs["schedule"] = cron
    for key in ("untagged_grace", "journal_keep", "restored_hold", "confirm_window"):
        if key in top and (duration := reader.duration(top[key], what=key)) is not None:
            kwargs[key] = duration
    if "max_deletions" in top:
        value = reader.integer(top["max_deletions"], what="max_deletions")
        if value is not None:
            kwargs["max_deletions"] = value
    if "repository_metrics_top" in top:
        value = reader.integer(top["repository_metrics_top"], what="repository_metrics_top")
        if value is not None:
            kwargs["repository_metrics_top"] = value
    if "state_dir" in top and (state := path_of("state_dir")) is not None:
        kwargs["state_dir"] = state
    if "listen" in top:
        text = reader.string(top["listen"], what="listen",
                             expected='host:port, like "0.0.0.0:9090"')
        if text is not None:
            listen = parse_listen(text)
            if listen is None:
                reader.error(top["listen"], f"listen must be host:port, like 0.0.0.0:9090, "
                             f"not {text!r}")
            else:
                kwargs["listen"] = listen
    if "log_format" in top:
        fmt = reader.string(top["log_format"], what="log_format")
        if fmt is not None and fmt not in ("json", "console"):
            reader.error(top["log_format"], f"log_format must be json or console, not {fmt!r}")
        elif fmt is not None:
            kwargs["log_format"] = fmt
    if "in_use" in top and (in_use := _in_use(reader, top["in_use"], base)) is not None:
        kwargs["in_use"] = in_use

    if problems or policies is None:
        raise ConfigError(problems)
    return Config(path=path, registries=registries, policies=policies, allowlist=allowlist,
                  **kwargs)  # type: ignore[arg-type]


def parse_listen(text: str) -> tuple[str, int] | None:
    """``host:port`` (an IPv6 host bracketed or not: the port is after the last colon) as
    (host, port); None when it is not that. An empty host is every IPv4 address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def _in_use(reader: Reader, node: yaml.Node, base: Path) -> InUseSettings | None:
    fields = reader.mapping(node, what="in_use", allowed=_IN_USE_KEYS)
    if fields is None:
        return None
    keep_for = InUseSettings().keep_for
    if "keep_for" in fields and (duration := reader.duration(
            fields["keep_for"], what="in_use.keep_for")) is not None:
        keep_for = duration
    clusters: list[ClusterSettings] = []
    names: set[str] = set()
    items = reader.sequence(fields["clusters"], what="in_use.clusters") \
        if "clusters" in fields else None
    for i, item in enumerate(items or ()):
        cluster = _cluster(reader, item, base, what=f"in_use.clusters[{i}]")
        if cluster is None:
            continue
        if cluster.name in names:
            reader.error(item, f"in_use.clusters[{i}]: duplicate cluster name {cluster.name!r}")
        names.add(cluster.name)
        clusters.append(cluster)
    if items is not None and not items:
        reader.error(fields["clusters"], "in_use.clusters is empty; name at least one cluster "
                     "or remove in_use")
    return InUseSettings(keep_for=keep_for, clusters=tuple(clusters))


def _cluster(reader: Reader, node: yaml.Node, base: Path, *, what: str) -> ClusterSettings | None:
    fields = reader.mapping(node, what=what, allowed=_CLUSTER_KEYS)
    if fields is None:
        return None
    before = len(reader.problems)
    name = reader.string(fields["name"], what=f"{what}.name") if "name" in fields else None
    if name is not None and not _CLUSTER_NAME.fullmatch(name):
        reader.error(fields["name"], f"{what}.name must match [a-z0-9][a-z0-9-]*, not {name!r}")
    kubeconfig = None
    if "kubeconfig" in fields and (text := reader.string(fields["kubeconfig"],
                                                         what=f"{what}.kubeconfig")):
        kubeconfig = base / text
    context = reader.string(fields["context"], what=f"{what}.context") \
        if "context" in fields else None
    if kubeconfig is not None:
        _check_kubeconfig(reader, fields["kubeconfig"], kubeconfig, context, what=what)
    elif context is not None:
        reader.error(fields["context"], f"{what}.context needs a kubeconfig; the in-cluster "
                     "service account has no contexts")
    namespaces = tuple(v for v, _ in reader.strings(fields["namespaces"],
                                                   what=f"{what}.namespaces")) \
        if "namespaces" in fields else ()
    min_images = 1
    if "min_images" in fields:
        value = reader.integer(fields["min_images"], what=f"{what}.min_images")
        min_images = value if value is not None else 1
    if len(reader.problems) > before or name is None:
        return None
    return ClusterSettings(name=name, kubeconfig=kubeconfig, context=context,
                           namespaces=namespaces, min_images=min_images)


def _check_kubeconfig(reader: Reader, node: yaml.Node, path: Path, context: str | None, *,
                      what: str) -> None:
    """A kubeconfig that cannot be read, or lacks the context, is a config error now rather
    than an unreadable cluster at the first run."""
    try:
        doc = yaml.safe_load(read_text(path))
    except OSError as exc:
        reader.error(node, f"{what}.kubeconfig: cannot read {path}: {exc.strerror}")
        return
    except ConfigError as exc:  # not UTF-8, located in the kubeconfig
        reader.problems.extend(exc.problems)
        return
    except (yaml.YAMLError, RecursionError) as exc:
        reader.error(node, f"{what}.kubeconfig: {path} is not valid YAML: {exc}")
        return
    contexts = doc.get("contexts") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(contexts or [], list):
        reader.error(node, f"{what}.kubeconfig: {path} is not a kubeconfig")
        return
    wanted = context or doc.get("current-context")
    known = [c.get("name") for c in contexts or () if isinstance(c, dict)]
    if not wanted:
        reader.error(node, f"{what}.kubeconfig: {path} has no current-context; set context")
    elif wanted not in known:
        reader.error(node, f"{what}: context {wanted!r} is not in {path} (it has: "
                     f"{', '.join(map(str, known)) or 'none'})")


# A host name or address (IPv6 without its brackets), IDNA's letters included.
_HOST = re.compile(r"[\w.~!$&'()*+,;=%:-]+")


def _host_problem(url: str) -> str | None:
    """What keeps the HTTP layer from reading the host and port of ``url``, or None."""
    import httpx2  # the HTTP layer's reading (45 ms to import: only a registry needs it)

    try:
        parts = urlsplit(url)
        if not parts.hostname:
            return "no host name in it"
        parts.port  # noqa: B018 (read for its ValueError: out of range, not a number)
        if not _HOST.fullmatch(parts.hostname):
            # RFC 3986's characters of a host name (a backslash is not one: httpx2 would
            # take it as part of the name, urllib and browsers as a path).
            raise ValueError(f"{parts.hostname!r} is not a host name")
        if not httpx2.URL(url).host:
            return "no host name in it"
    except (ValueError, httpx2.InvalidURL) as exc:
        return f"the host or port cannot be read ({exc})"
    return None


def _registry(
    reader: Reader, name: str, node: yaml.Node, base: Path, env: dict[str, str] | os._Environ
) -> RegistrySettings | None:
    what = f"registries.{name}"
    fields = reader.mapping(node, what=what, allowed=_REGISTRY_KEYS)
    if fields is None:
        return None
    before = len(reader.problems)

    url = None
    if "url" in fields and (text := reader.string(fields["url"], what=f"{what}.url")):
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            reader.error(fields["url"], f"{what}.url must start with https:// (or http:// for "
                         f"a plain-HTTP registry), like https://registry.example.com")
        elif parts.path.strip("/") or parts.query:
            reader.error(fields["url"], f"{what}.url must name only the registry, without a "
                         "path: retention adds /v2/ itself")
        elif parts.username is not None or parts.password is not None:
            # Never sent (the HTTP layer refuses such a URL): said now, not on every request.
            reader.error(fields["url"], f"{what}.url must not carry a user or password: set "
                         "username and password_file (or their _env) instead")
        elif (problem := _host_problem(text)) is not None:
            reader.error(fields["url"], f"{what}.url: {problem}")
        else:
            url = f"{parts.scheme}://{parts.netloc}"

    host = urlsplit(url).hostname or "" if url else ""
    rtype = "acr" if host.endswith(".azurecr.io") else "ghcr" if host == GHCR_HOST else "oci"
    if "type" in fields and (t := reader.string(fields["type"], what=f"{what}.type")):
        if t not in REGISTRY_TYPES:
            reader.error(fields["type"], f"{what}.type must be oci, acr or ghcr, not {t!r}")
        rtype = t

    def text_of(key: str) -> str | None:
        return reader.string(fields[key], what=f"{what}.{key}") if key in fields else None

    def env_of(key: str) -> str | None:
        var = text_of(key)
        if var is None:
            return None
        if var not in env:
            reader.error(fields[key], f"{what}.{key}: environment variable {var} is not set")
            return None
        return env[var]

    for a, b in (("username", "username_env"), ("password_file", "password_env"),
                 ("token_file", "token_env")):
        if a in fields and b in fields:
            reader.error(fields[b], f"{what}: give {a} or {b}, not both")
    username = text_of("username") or env_of("username_env")
    password = env_of("password_env")

    def secret_file(key: str) -> str | None:
        if key not in fields or not (name := text_of(key)):
            return None
        try:
            return (base / name).read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            reader.error(fields[key], f"{what}.{key}: cannot read {base / name}: "
                         f"{exc.strerror}")
        except UnicodeDecodeError:
            reader.error(fields[key], f"{what}.{key}: {base / name} is not UTF-8 text")
        return None

    if "password_file" in fields:
        password = secret_file("password_file")
    github = _github(reader, fields, node, what, rtype, url, env_of, secret_file)
    if github is not None and (token := github[3] if github[3] is not None else password):
        # The token is the password ghcr.io's token exchange takes (any user name does;
        # the owner is what docker login users write).
        username, password = username or github[0], token
    credentials = None
    # Which parts were written (a part written but unreadable is reported where it is
    # written, not a second time as missing).
    user_given = "username" in fields or "username_env" in fields
    password_given = "password_file" in fields or "password_env" in fields
    if rtype == "ghcr":  # the token is the password, the owner the user: _github checks
        user_given = password_given = True
    if username is not None and password is not None:
        credentials = Credentials(username, Secret(password))
    elif user_given != password_given and "docker_config" not in fields:
        missing = "password_file or password_env" if not password_given else "username"
        reader.error(node, f"{what}: {missing} is missing; credentials need both parts")
    if "docker_config" in fields and (dc := text_of("docker_config")):
        if credentials is not None:
            reader.error(fields["docker_config"], f"{what}: give username/password or "
                         "docker_config, not both")
        elif url:
            credentials = _docker_config_credentials(
                reader, fields["docker_config"], base / dc, urlsplit(url).netloc, what)

    ca_file = None
    if "ca_file" in fields and (ca := text_of("ca_file")):
        ca_file = base / ca
        try:
            problem = pem_problem(ca_file.read_bytes())
        except OSError:
            problem = "is not a readable file"
        if problem is not None:
            reader.error(fields["ca_file"], f"{what}.ca_file: {ca_file} {problem}")
    insecure = False
    if "insecure_skip_verify" in fields:
        insecure = bool(reader.boolean(fields["insecure_skip_verify"],
                                       what=f"{what}.insecure_skip_verify"))
    token_hosts: list[str] = []
    if "token_hosts" in fields:
        for entry, entry_node in reader.strings(fields["token_hosts"],
                                                what=f"{what}.token_hosts"):
            # Matched against a token realm's host and port: a URL here would never match,
            # and its credentials would be refused with no clue why.
            if not _ALIAS.fullmatch(entry):
                reader.error(entry_node, f"{what}.token_hosts: {entry!r} is not a host name "
                             "(write host, or host:port for a port not the scheme's own; "
                             "without scheme or path)")
            else:
                token_hosts.append(entry)
    repositories: list[str] = []
    if "repositories" in fields:
        for repository, repo_node in reader.strings(fields["repositories"],
                                                    what=f"{what}.repositories"):
            # Written as the registry will read it: excludes, pins and in-use compare this
            # very string, and a name the URL normalises would be read (and deleted) elsewhere.
            if not is_repository(repository):
                reader.error(repo_node, f"{what}.repositories: {not_canonical(repository)}")
            elif github is not None and not repository.startswith(github[0].lower() + "/"):
                # On ghcr a repository is a package of the owner: another name is never read.
                reader.error(repo_node, f"{what}.repositories: {repository!r} is not a "
                             f"package of owner {github[0]} (write "
                             f"{github[0].lower()}/<package>)")
            else:
                repositories.append(repository)
    concurrency = 8
    if "concurrency" in fields:
        concurrency = reader.integer(fields["concurrency"], what=f"{what}.concurrency",
                                     minimum=1) or 8
    aliases: list[str] = []
    if "aliases" in fields:
        for alias, alias_node in reader.strings(fields["aliases"], what=f"{what}.aliases"):
            if not _ALIAS.fullmatch(alias):
                reader.error(alias_node, f"{what}.aliases: {alias!r} is not a host name "
                             "(write host or host:port, without scheme or path)")
            else:
                aliases.append(alias)
    if len(reader.problems) > before or url is None:
        return None
    return RegistrySettings(
        name=name, url=url, type=rtype, credentials=credentials, ca_file=ca_file,
        insecure_skip_verify=insecure, token_hosts=tuple(token_hosts),
        repositories=tuple(repositories),
        concurrency=concurrency, aliases=tuple(aliases),
        **({"owner": github[0], "owner_type": github[1], "api_url": github[2]}
           if github is not None else {}),
    )


def _github(reader: Reader, fields: dict[str, yaml.Node], node: yaml.Node, what: str,
            rtype: str, url: str | None, env_of, secret_file
            ) -> tuple[str, str, str, str | None] | None:
    """(owner, owner_type, api_url, token) of a ghcr registry; None for any other type, whose
    GitHub keys are errors (a key that does nothing must not look as if it did)."""
    if rtype != "ghcr":
        for key in _GHCR_KEYS:
            if key in fields:
                reader.error(fields[key], f"{what}.{key} is for type ghcr only (GitHub "
                             "Container Registry)")
        return None
    owner = reader.string(fields["owner"], what=f"{what}.owner") if "owner" in fields else None
    if "owner" not in fields:
        reader.error(node, f"{what}: owner is missing: the organization or user whose "
                     "container packages retention manages (type ghcr)")
    elif owner is not None and not _OWNER.fullmatch(owner):
        reader.error(fields["owner"], f"{what}.owner must be a GitHub organization or user "
                     f"name (letters, digits, hyphens), not {owner!r}")
        owner = None
    owner_type = "org"
    if "owner_type" in fields and (t := reader.string(fields["owner_type"],
                                                       what=f"{what}.owner_type")):
        if t not in OWNER_TYPES:
            reader.error(fields["owner_type"], f"{what}.owner_type must be org or user, "
                         f"not {t!r}")
        owner_type = t
    api_url = GITHUB_API
    if "api_url" in fields and (text := reader.string(fields["api_url"],
                                                       what=f"{what}.api_url")):
        parts = urlsplit(text)
        problem = None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problem = ("must start with https:// (GitHub Enterprise Server: "
                       "https://HOST/api/v3)")
        elif parts.username is not None or parts.password is not None:
            problem = "must not carry a user or password: the token is token_file's"
        elif parts.query or parts.fragment:
            problem = "must be a URL without query or fragment"
        elif (host_problem := _host_problem(text)) is not None:
            problem = host_problem
        elif url and urlsplit(url).scheme == "https" and parts.scheme != "https":
            problem = "must be https when the registry is: the token never travels unencrypted"
        if problem is not None:
            reader.error(fields["api_url"], f"{what}.api_url {problem}")
        else:
            api_url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    token = env_of("token_env") if "token_env" in fields else secret_file("token_file")
    given = [k for k in ("password_file", "password_env", "docker_config") if k in fields]
    if ("token_file" in fields or "token_env" in fields) and given:
        reader.error(fields[given[0]], f"{what}: give token_file (or token_env) or "
                     f"{given[0]}, not both: on ghcr the GitHub token is both")
    elif "token_file" not in fields and "token_env" not in fields and not given:
        reader.error(node, f"{what}: token_file (or token_env) is missing: a GitHub token "
                     "with read:packages and delete:packages (write:packages for restore)")
    if owner is None:
        return None
    return owner, owner_type, api_url, token


_ALIAS = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                    r"(?::[0-9]+)?")


def _check_hosts_unique(reader: Reader, node: yaml.MappingNode,
                        registries: dict[str, RegistrySettings]) -> None:
    # An alias that also names another registry would make a pin or an in-use image protect
    # in the wrong registry (or not in the right one). Two registries with one URL (say,
    # with different credentials) are the same storage and fine.
    owner: dict[str, tuple[str, str]] = {}  # host -> (registry, its URL host)
    for settings in registries.values():
        own = normalize_host(settings.host)
        for host in {normalize_host(h) for h in (settings.host, *settings.aliases)}:
            other, other_own = owner.setdefault(host, (settings.name, own))
            if other_own != own:
                reader.error(node, f"registries {other} and {settings.name} both have the "
                             f"host {host} (as URL or in aliases); a host names one registry")


def _docker_config_credentials(
    reader: Reader, node: yaml.Node, path: Path, netloc: str, what: str
) -> Credentials | None:
    """Credentials for ``netloc`` from a docker ``config.json`` (its ``auths`` entries)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        reader.error(node, f"{what}.docker_config: cannot read {path}: {exc.strerror}")
        return None
    except ValueError as exc:
        reader.error(node, f"{what}.docker_config: {path} is not valid JSON: {exc}")
        return None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    for key, entry in (auths or {}).items():
        if urlsplit(key if "://" in key else f"//{key}").netloc != netloc:
            continue
        if not isinstance(entry, dict):
            break
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], Secret(entry["password"]))
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                break
            return Credentials(user, Secret(password))
        if entry.get("identitytoken"):
            # An OAuth refresh token (`az acr login`, `docker login` with OAuth): it is not a
            # password and must not be sent as one.
            reader.error(node, f"{what}.docker_config: the entry for {netloc} in {path} holds "
                         "an identitytoken, which is not supported; use username/password, "
                         "or Microsoft Entra ID for ACR")
            return None
    reader.error(node, f"{what}.docker_config: {path} has no usable auths entry for {netloc} "
                 "(credential helpers are not supported; write the auth entry or use "
                 "username/password_file)")
    return None
