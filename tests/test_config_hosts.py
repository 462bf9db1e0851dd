"""The `aliases` key of a registry: validated with locations, one host per registry."""

from __future__ import annotations

import pytest

from retention.config import load_config
from retention.errors import ConfigError


def write(tmp_path, registries: str):
    (tmp_path / "policies").mkdir(exist_ok=True)
    path = tmp_path / "retention.yaml"
    path.write_text(f"registries:\n{registries}policies: policies\n")
    return path


def test_aliases_resolve_to_their_registry(tmp_path):
    config = load_config(write(tmp_path, """\
  main:
    url: https://registry.internal:443
    aliases: [Registry.Example.com, "pull.example.com:443"]
  other:
    url: http://127.0.0.1:5000
"""))
    hosts = config.hosts()
    assert config.registries["main"].aliases == ("Registry.Example.com", "pull.example.com:443")
    assert hosts.registry_of("registry.example.com:443") == "main"
    assert hosts.canonical_host("PULL.example.com") == "registry.internal"
    assert hosts.registry_of("127.0.0.1:5000") == "other"
    assert hosts.registry_of("127.0.0.1") is None


@pytest.mark.parametrize(("aliases", "message"), [
    ('["https://x.example.com"]', "4:15: registries.main.aliases: 'https://x.example.com' "
                                  "is not a host name"),
    ("x.example.com", "4:14: registries.main.aliases must be a list"),
])
def test_bad_aliases_are_located(tmp_path, aliases, message):
    path = write(tmp_path, f"  main:\n    url: https://r.example.com\n    aliases: {aliases}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any(message in str(p) for p in exc.value.problems), exc.value.problems


def test_a_host_names_one_registry(tmp_path):
    path = write(tmp_path, """\
  a:
    url: https://a.example.com
    aliases: [shared.example.com]
  b:
    url: https://b.example.com
    aliases: [Shared.Example.com:443]
  c:
    url: https://a.example.com
""")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    [problem] = exc.value.problems
    assert "registries a and b both have the host shared.example.com" in str(problem)


@pytest.mark.parametrize(("content", "message"), [
    (b"not a certificate\n", "holds no PEM certificate"),
    (b"\x30\x82\x01\x0a\x02\x82", "is not a PEM file (a DER certificate?"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     "holds a certificate that cannot be read"),
])
def test_a_ca_file_that_is_not_pem_certificates_is_located(tmp_path, content, message):
    """rustls skips what it cannot read in a CA file: without this check the mistake would
    show only later, as "certificate not trusted"."""
    (tmp_path / "ca.pem").write_bytes(content)
    path = write(tmp_path, "  main:\n    url: https://r.example.com\n    ca_file: ca.pem\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    [problem] = exc.value.problems
    assert "4:14: registries.main.ca_file:" in str(problem) and message in str(problem)


@pytest.mark.parametrize("shape", ["as written", "bundle", "mozilla comments", "bom", "crlf",
                                   "with its key"])
def test_a_ca_file_of_pem_certificates_loads(tmp_path, shape):
    """What CA files look like in the wild: bundles, Mozilla's UTF-8 comments, a
    byte-order mark, CRLF line ends, a key beside the certificate."""
    from tests.servers import ca_signed

    ca, _, key = ca_signed(tmp_path / "tls")
    other, _, _ = ca_signed(tmp_path / "other")
    pem = ca.read_bytes()
    content = {
        "as written": pem,
        "bundle": pem + other.read_bytes(),
        "mozilla comments": "# Issuer: CN=NetLock Arany (Class Gold) Főtanúsítvány\n".encode()
                            + pem,
        "bom": b"\xef\xbb\xbf" + pem,
        "crlf": pem.replace(b"\n", b"\r\n"),
        "with its key": key.read_bytes() + pem,
    }[shape]
    (tmp_path / "ca.pem").write_bytes(content)
    path = write(tmp_path, "  main:\n    url: https://r.example.com\n    ca_file: ca.pem\n")
    assert load_config(path).registries["main"].ca_file == tmp_path / "ca.pem"


def test_a_ca_file_that_is_missing_is_located(tmp_path):
    path = write(tmp_path, "  main:\n    url: https://r.example.com\n    ca_file: nowhere.pem\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    [problem] = exc.value.problems
    assert "4:14: registries.main.ca_file:" in str(problem)
    assert "nowhere.pem is not a readable file" in str(problem)
