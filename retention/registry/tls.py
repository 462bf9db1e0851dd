"""Reading a CA file: the PEM certificates in it, whatever surrounds them."""

from __future__ import annotations

import re

# A bundle may carry comments (Mozilla's name each CA, in UTF-8), a byte-order mark, CRLF
# line ends, or a private key beside the certificate: only the certificates are read.
_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----",
                          re.DOTALL)


def pem_certificates(data: bytes) -> bytes:
    """The PEM certificate blocks of ``data``, one after the other; empty when none."""
    return b"\n".join(m.group(0) for m in _CERTIFICATE.finditer(data))


def pem_problem(data: bytes) -> str | None:
    """Why ``data`` gives no usable certificate, or None. (TLS libraries skip what they
    cannot read: a mistake would show only later, as an untrusted certificate.)"""
    import ssl

    certificates = pem_certificates(data)
    if not certificates:
        if b"-----BEGIN" not in data and data[:1] == b"\x30":
            return "is not a PEM file (a DER certificate? convert it: openssl x509 -inform der)"
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.create_default_context().load_verify_locations(cadata=certificates.decode())
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"holds a certificate that cannot be read ({reason})"
    return None
