"""Real servers for the tests: CNCF distribution (Debian's docker-registry), a token server
issuing JWTs that distribution verifies, and a fault-injecting HTTP proxy."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_binary() -> str:
    found = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None)
    if found is None:
        raise RuntimeError(
            "docker-registry is not installed: the tests need Debian's docker-registry "
            "package (CNCF distribution 2.8). Run ./scripts/test.sh, which installs it.")
    return found


@dataclass
class Registry:
    url: str
    config_path: Path
    root: Path
    process: subprocess.Popen
    log_path: Path

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def garbage_collect(self) -> str:
        """Run distribution's garbage collector (the registry must be stopped or read-only;
        distribution documents GC on a live registry as unsafe only for concurrent pushes)."""
        out = subprocess.run([registry_binary(), "garbage-collect", str(self.config_path)],
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout

    def blob_store_bytes(self) -> int:
        blobs = self.root / "docker/registry/v2/blobs"
        return sum(p.stat().st_size for p in blobs.rglob("data") if p.is_file())


def start_registry(workdir: Path, *, auth: dict | None = None, delete: bool = True,
                   tls: tuple[Path, Path] | None = None, schema1: bool = False,
                   metrics_port: int | None = None, foreign_urls: str | None = None) -> Registry:
    """``tls`` is (certificate, key): the registry then serves HTTPS. ``schema1``: accept
    Docker schema-1 manifests (distribution 2.8 refuses their push unless told to).
    ``foreign_urls``: a regular expression of the layer ``urls`` manifests may name (Windows
    images' foreign layers); by default distribution 2.8 refuses every such URL.
    ``metrics_port``: export the registry's own request counters (Prometheus) there."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = workdir / "data"
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = auth
    if schema1:
        config["compatibility"] = {"schema1": {"enabled": True}}
    if foreign_urls is not None:
        config["validation"] = {"manifests": {"urls": {"allow": [foreign_urls]}}}
    if tls:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    if metrics_port is not None:
        config["http"]["debug"] = {"addr": f"127.0.0.1:{metrics_port}",
                                   "prometheus": {"enabled": True, "path": "/metrics"}}
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = workdir / "registry.log"
    log = log_path.open("w")
    proc = subprocess.Popen([registry_binary(), "serve", str(config_path)], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log_path.read_text()}")
        try:
            if httpx2.get(url + "/v2/", timeout=1, verify=False).status_code in (200, 401):
                return Registry(url, config_path, root, proc, log_path)
        except httpx2.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"docker-registry did not start on {url}: {log_path.read_text()}")


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------
# A small token server: distribution's `auth: token` verifies its JWTs against a certificate.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key) -> str:
    """The key ID distribution (libtrust) derives from a public key."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(der).digest()[:30]
    b32 = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


@dataclass
class TokenServer:
    users: dict[str, str]
    workdir: Path
    service: str = "retention-test"
    issuer: str = "retention-test-issuer"
    lifetime: int = 300
    issued: Counter = field(default_factory=Counter)
    authorizations_seen: list[str] = field(default_factory=list)
    # Repositories the user gets no access to. "filter": the token is issued without their
    # access (as docker_auth and Harbor do; the registry then answers 401 insufficient
    # scope); "403": the token request is refused.
    denied: set[str] = field(default_factory=set)
    deny_mode: str = "filter"
    _server: ThreadingHTTPServer | None = None

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retention-test-token")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30))
                .sign(self.key, hashes.SHA256()))
        self.cert_path = self.workdir / "token-cert.pem"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self.key.public_key())

    def token(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp":
                  now + self.lifetime, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                server.authorizations_seen.append(auth)
                user = None
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(name) == password:
                        user = name
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
                refused = [s for s in scopes if s.split(":")[0] == "repository"
                           and ":".join(s.split(":")[1:-1]) in server.denied]
                if refused and server.deny_mode == "403":
                    body = b'{"errors":[{"code":"DENIED","message":"access to the requested ' \
                           b'resource is not authorized"}]}'
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                scopes = [s for s in scopes if s not in refused]
                server.issued[tuple(scopes)] += 1
                body = json.dumps({"token": server.token(user, scopes),
                                   "expires_in": server.lifetime}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


# ------------------------------------------------------------------------------------------
# A fault-injecting proxy between the client and the registry.


# rewrite(method, path, status, headers, body) -> (status, headers, body)
Rewrite = Callable[[str, str, int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


@dataclass
class Fault:
    method: str  # "*" for any
    path: str  # regular expression searched in the path and query
    # "status", "reset", "delay", "redirect"; "hook": run ``hook(method, path)`` while the
    # request is in flight (it may change the registry), then forward it; "rewrite": forward
    # it and pass the registry's answer through ``rewrite`` (a Link, the body, the status);
    # "drip": forward it and send the answer's body a byte every ``seconds``.
    action: str
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    skip: int = 0  # matching requests let through untouched first: skip=1 hits the 2nd
    hook: Callable[[str, str], None] | None = None
    rewrite: Rewrite | None = None
    body: bytes | None = None  # the body of a "status" answer (else a JSON error)


def paged_tags(page_size: int) -> Rewrite:
    """Makes distribution 2.8's unpaged tags/list paged, as distribution 3, Harbor and
    most registries page it: at most ``n`` (capped at ``page_size``) tags after ``last``,
    in lexical order, and a ``Link`` to the next page."""

    def rewrite(method: str, path: str, status: int, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        if status != 200:
            return status, headers, body
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        n = min(int(query.get("n", [page_size])[0]), page_size)
        last = query.get("last", [None])[0]
        doc = json.loads(body)
        tags = sorted(doc.get("tags") or [])
        rest = [t for t in tags if last is None or t > last]
        doc["tags"] = rest[:n]
        headers = {k: v for k, v in headers.items() if k.lower() != "link"}
        if len(rest) > n:
            headers["Link"] = f'<{parts.path}?last={doc["tags"][-1]}&n={n}>; rel="next"'
        return status, headers, json.dumps(doc).encode()

    return rewrite


def _drop_listed(key: str, dropped: tuple[str, ...]) -> Rewrite:
    def rewrite(method: str, path: str, status: int, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        if status != 200:
            return status, headers, body
        doc = json.loads(body)
        doc[key] = [t for t in doc.get(key) or [] if t not in dropped]
        return status, headers, json.dumps(doc).encode()

    return rewrite


def drop_tags(*dropped: str) -> Rewrite:
    """Leaves ``dropped`` out of a tags/list answer, as distribution 3.1.0 on S3 leaves out a
    tag that another listed tag is a prefix of (distribution/distribution#4891)."""
    return _drop_listed("tags", dropped)


def drop_repositories(*dropped: str) -> Rewrite:
    """Leaves ``dropped`` out of a _catalog answer, as distribution's catalog paging drops
    repositories (distribution/distribution#4903)."""
    return _drop_listed("repositories", dropped)


def set_link(link: str | None) -> Rewrite:
    """Replaces the answer's ``Link`` header (None removes it)."""

    def rewrite(method: str, path: str, status: int, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in headers.items() if k.lower() != "link"}
        if link is not None:
            headers["Link"] = link
        return status, headers, body

    return rewrite


def set_realm(realm: str) -> Rewrite:
    """Makes a 401's bearer challenge name ``realm``: a forged answer, or a registry sending
    its clients to a token service of its choosing."""

    def rewrite(method: str, path: str, status: int, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {k: re.sub(r'realm="[^"]*"', lambda _: f'realm="{realm}"', v)
                   if k.lower() == "www-authenticate" else v for k, v in headers.items()}
        return status, headers, body

    return rewrite


_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


class FaultProxy:
    """Forwards HTTP to ``upstream``, injecting faults on request; counts every request."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def inject(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def count(self, method: str, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for m, p in self.requests if m == method and rx.search(p))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.times > 0 and fault.method in ("*", method) and \
                        re.search(fault.path, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.times -= 1
                    return fault
        return None

    def start(self, *, tls: tuple[Path, Path] | None = None) -> str:
        """``tls``: (certificate, key); the proxy then serves HTTPS (to plain-HTTP upstream)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # An answer is written in two sends (headers, then body): with Nagle's algorithm
            # the body waited for the client's delayed ACK, ~40 ms added to every answer.
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.action == "reset":
                    # SO_LINGER 0 makes close() send RST: a connection reset by peer.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.close()
                    return
                if fault is not None and fault.action == "status":
                    payload = fault.body if fault.body is not None else \
                        b'{"errors":[{"code":"TOOMANYREQUESTS","message":"injected"}]}'
                    self.send_response(fault.status)
                    for k, v in fault.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault is not None and fault.action == "redirect":
                    # Like a registry sending blob reads to its storage backend: another
                    # origin (here the registry itself, by its own address).
                    self.send_response(307)
                    self.send_header("Location", f"{fault.headers['target']}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault is not None and fault.action == "delay":
                    time.sleep(fault.seconds)
                if fault is not None and fault.action == "hook":
                    fault.hook(self.command, self.path)
                conn = http.client.HTTPConnection(proxy.upstream.hostname,
                                                  proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                answer = {k: v for k, v in response.getheaders() if k.lower() not in _HOP}
                if fault is not None and fault.action == "rewrite":
                    status, answer, data = fault.rewrite(self.command, self.path, status,
                                                         answer, data)
                self.send_response(status)
                for k, v in answer.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and fault is not None and fault.action == "drip":
                    with contextlib.suppress(OSError):  # the client gave up
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            time.sleep(fault.seconds)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_DELETE = do_PUT = do_POST = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # with its query
    headers: dict[str, str]
    body: bytes


class Recorder:
    """A host that is not the registry: keeps every request it receives (method, path,
    headers, body) and answers 401, with a bearer challenge naming its own ``/token`` when
    ``challenge`` is set. Where a leaked credential would land, to see that none does."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, challenge: bool = False):
        self.host, self.port, self.challenge = host, port, challenge
        self.received: list[Received] = []
        self.url = ""
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.received.append(Received(self.command, self.path,
                                                  dict(self.headers.items()), body))
                payload = b'{"errors":[{"code":"UNAUTHORIZED","message":"recorded"}]}'
                self.send_response(401)
                if recorder.challenge:
                    self.send_header("WWW-Authenticate",
                                     f'Bearer realm="{recorder.url}/token",service="recorder"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://{self.host}:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def running(registry: Registry) -> Iterator[Registry]:
    try:
        yield registry
    finally:
        registry.stop()


def ca_signed(workdir: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A private CA and a server certificate it signed for ``host`` (CA:FALSE, as a CA
    issues them): (CA certificate, server certificate, server key) PEM files."""
    import ipaddress

    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retention test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = workdir / "ca.crt", workdir / "tls.crt", workdir / "tls.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def self_signed(workdir: Path, host: str = "127.0.0.1", *, san: bool = True
                ) -> tuple[Path, Path]:
    """A self-signed certificate for ``host``, marked as a CA (basicConstraints CA:TRUE, as
    ``openssl req -x509`` and Docker's guide to a registry's own certificate make it):
    (certificate, key) PEM files. ``san=False``: the host named in the CN only."""
    import ipaddress

    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if san:  # without: the host in the CN only, as certificates made before 2017 often are
        cert = cert.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
            ipaddress.ip_address(host))]), critical=False)
    cert = cert.sign(key, hashes.SHA256())
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = workdir / "tls.crt", workdir / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path
