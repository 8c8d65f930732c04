"""Certificates for development and tests: a CA, server and client certificates, TLS
client contexts.

:func:`init_gateway_pki` does the same for CAN gateways on an MQTT broker with mutual
TLS: the CA, a broker certificate, one client certificate per gateway (CN = gateway id,
so a broker that takes the certificate identity as username can restrict each gateway to
its own topics) with the gateway's own ``config.json``, and one for fleetgate's
subscriber. Gateway keys are ECC P-256 by default (what an ESP32 handles best); P-384,
P-521 and RSA 2048, which AWS IoT Core also accepts, can be chosen.

:func:`init_pki` makes a CA whose name Tesla's identity rules accept (``Tesla Motors Products
CA``, so a leaf issued by it maps to ``vehicle_device.<CN>``), a server certificate and one
client certificate per VIN. The CA key is **EC**: Tesla's production bundle already holds
an RSA certificate with that very name, and with an RSA development CA OpenSSL can pick
the wrong candidate issuer and refuse a correctly signed vehicle. The certificates also
carry subject/authority key identifiers, which OpenSSL uses to tell same-named issuers
apart. The trust store of the vehicle listener itself is in
:mod:`fleetgate.listeners.tesla.tls`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

# cryptography (~10 MB of a server's memory) is imported by the functions that make or read
# certificates: a server whose certificates exist never loads it for them.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEV_CA_NAME = "Tesla Motors Products CA"
# The reference's cert tool gives a CN starting with "board" this OU, which the identity
# rules map to ``vehicle_board_device``.
BOARD_OU = "Tesla Motors SN"

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
VEHICLES_DIR = "vehicles"

PrivateKey: TypeAlias = "ec.EllipticCurvePrivateKey"
AnyPrivateKey: TypeAlias = "ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey"

GatewayKeyType = Literal["p256", "p384", "p521", "rsa2048"]
GATEWAY_KEY_TYPES: tuple[str, ...] = get_args(GatewayKeyType)
GATEWAYS_DIR = "gateways"
SUBSCRIBER_NAME = "fleetgate"
SUBSCRIBER_CERT = "subscriber.crt"
SUBSCRIBER_KEY = "subscriber.key"


def client_ssl_context(
    cert: str | Path | None, key: str | Path | None, ca: str | Path | None
) -> ssl.SSLContext:
    """TLS context of a simulated vehicle: presents ``cert`` and trusts ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    else:
        context.load_default_certs()
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


# -- certificate generation ----------------------------------------------------------------
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def generate_ca(
    common_name: str = DEV_CA_NAME, days: int = 3650
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed EC CA certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetgate development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_builder(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    subject: x509.Name,
    key: AnyPrivateKey,
    days: int,
) -> x509.CertificateBuilder:
    from cryptography import x509

    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def issue_server_cert(
    ca_cert: x509.Certificate, ca_key: PrivateKey, hosts: Sequence[str], days: int = 825
) -> tuple[x509.Certificate, PrivateKey]:
    """A server certificate for ``hosts`` (DNS names or IPs); 127.0.0.1 is always added."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, "localhost", "127.0.0.1"]:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]
    )
    cert = (
        _leaf_builder(ca_cert, ca_key, subject, key, days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def issue_client_cert(
    ca_cert: x509.Certificate, ca_key: PrivateKey, common_name: str, days: int = 825
) -> tuple[x509.Certificate, PrivateKey]:
    """A vehicle client certificate with CN ``common_name`` (the VIN)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    attributes = []
    if common_name.startswith("board"):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, BOARD_OU))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    cert = (
        _leaf_builder(ca_cert, ca_key, x509.Name(attributes), key, days)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_cert(path: Path, cert: x509.Certificate) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: AnyPrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Private keys are readable by their owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _load_ca(directory: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key")
    return cert, key


@dataclass(frozen=True)
class DevPki:
    """Paths of a development PKI written by :func:`init_pki`."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    vehicles: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)

    def config_snippet(self) -> dict[str, dict[str, str]]:
        """The ``tls`` block of a config that uses this PKI."""
        return {
            "tls": {
                "server_cert": str(self.server_cert),
                "server_key": str(self.server_key),
                "ca_file": str(self.ca_cert),
            }
        }


def vehicle_paths(directory: Path, vin: str) -> tuple[Path, Path]:
    """Where :func:`init_pki` keeps the certificate and key of ``vin``."""
    base = directory / VEHICLES_DIR
    return base / f"{vin}.crt", base / f"{vin}.key"


def init_pki(directory: str | Path, host: str = "localhost", vins: Sequence[str] = ()) -> DevPki:
    """Create (or extend) a development PKI in ``directory``.

    An existing CA is reused, so running again with more VINs only adds client
    certificates; the server certificate is made once and kept.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    server_cert, server_key = out / SERVER_CERT, out / SERVER_KEY
    vehicles = {vin: vehicle_paths(out, vin) for vin in vins}
    wanted = [out / CA_CERT, out / CA_KEY, server_cert, server_key]
    wanted += [path for pair in vehicles.values() for path in pair]
    if all(path.is_file() for path in wanted):
        # Nothing to issue: the CA is not read (nor cryptography loaded, at server start).
        return DevPki(out, out / CA_CERT, out / CA_KEY, server_cert, server_key, vehicles)
    loaded = _load_ca(out)
    if loaded is None:
        ca_cert, ca_key = generate_ca()
        write_cert(out / CA_CERT, ca_cert)
        write_key(out / CA_KEY, ca_key)
        created += [out / CA_CERT, out / CA_KEY]
    else:
        ca_cert, ca_key = loaded
    if not (server_cert.is_file() and server_key.is_file()):
        cert, key = issue_server_cert(ca_cert, ca_key, [host])
        write_cert(server_cert, cert)
        write_key(server_key, key)
        created += [server_cert, server_key]
    for vin, (cert_path, key_path) in vehicles.items():
        if not (cert_path.is_file() and key_path.is_file()):
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            cert, key = issue_client_cert(ca_cert, ca_key, vin)
            write_cert(cert_path, cert)
            write_key(key_path, key)
            created += [cert_path, key_path]
    return DevPki(out, out / CA_CERT, out / CA_KEY, server_cert, server_key, vehicles, created)


# -- CAN gateways (MQTT with mutual TLS) ---------------------------------------------------
def new_gateway_key(key_type: GatewayKeyType = "p256") -> AnyPrivateKey:
    """A private key of one of the types AWS IoT Core accepts for devices."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curves: dict[str, ec.EllipticCurve] = {
        "p256": ec.SECP256R1(),
        "p384": ec.SECP384R1(),
        "p521": ec.SECP521R1(),
    }
    if key_type not in curves:
        raise ValueError(f"key type must be one of {', '.join(GATEWAY_KEY_TYPES)}")
    return ec.generate_private_key(curves[key_type])


def issue_gateway_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    gateway_id: str,
    key_type: GatewayKeyType = "p256",
    days: int = 825,
) -> tuple[x509.Certificate, AnyPrivateKey]:
    """A TLS client certificate for an MQTT client, CN = ``gateway_id``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = new_gateway_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    cert = (
        _leaf_builder(ca_cert, ca_key, subject, key, days)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def gateway_paths(directory: Path, gateway_id: str) -> tuple[Path, Path, Path]:
    """Certificate, key and config.json of ``gateway_id`` under ``directory``."""
    base = directory / GATEWAYS_DIR
    return (
        base / f"{gateway_id}.crt",
        base / f"{gateway_id}.key",
        base / f"{gateway_id}.json",
    )


def gateway_config(
    gateway_id: str,
    endpoint: str,
    cert: Path,
    key: Path,
    ca: Path,
    *,
    publish_interval_seconds: int = 300,
) -> dict[str, Any]:
    """The gateway's own config file (the CAN-gateway publisher's format), absolute paths."""
    return {
        "endpoint": endpoint,
        "thing_name": gateway_id,
        "client_id": gateway_id,
        "cert_path": str(cert.resolve()),
        "key_path": str(key.resolve()),
        "ca_path": str(ca.resolve()),
        "publish_interval_seconds": publish_interval_seconds,
    }


@dataclass(frozen=True)
class GatewayPki:
    """Paths written by :func:`init_gateway_pki`."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    subscriber_cert: Path
    subscriber_key: Path
    # gateway id -> (certificate, key, config.json)
    gateways: dict[str, tuple[Path, Path, Path]] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)

    def mosquitto_listener(self, port: int = 8883, bind: str = "127.0.0.1") -> str:
        """mosquitto.conf lines for a mutual-TLS listener that trusts this CA (loopback
        unless ``bind`` says otherwise: 0.0.0.0 for gateways on the network)."""
        return "\n".join(
            [
                "per_listener_settings true",
                f"listener {port} {bind}",
                f"cafile {self.ca_cert.resolve()}",
                f"certfile {self.server_cert.resolve()}",
                f"keyfile {self.server_key.resolve()}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        )

    def ingest_snippet(self, url: str) -> dict[str, Any]:
        """The ``mqtt_ingest`` section that subscribes with the subscriber certificate."""
        return {
            "mqtt_ingest": {
                "url": url,
                "tls": {
                    "ca_file": str(self.ca_cert),
                    "cert": str(self.subscriber_cert),
                    "key": str(self.subscriber_key),
                },
            }
        }


def init_gateway_pki(
    directory: str | Path,
    gateway_ids: Sequence[str],
    *,
    key_type: GatewayKeyType = "p256",
    host: str = "localhost",
    endpoint: str | None = None,
    publish_interval_seconds: int = 300,
) -> GatewayPki:
    """Create (or extend) a PKI for gateways on a mutual-TLS broker in ``directory``.

    The CA and broker certificate are shared with :func:`init_pki` (same files), so one
    development CA can serve vehicles and gateways. Existing gateway certificates are
    kept; running again with more ids only adds gateways.
    """
    out = Path(directory)
    base = init_pki(out, host=host)
    created = list(base.created)
    loaded = _load_ca(out)
    assert loaded is not None  # init_pki wrote it
    ca_cert, ca_key = loaded
    subscriber_cert, subscriber_key = out / SUBSCRIBER_CERT, out / SUBSCRIBER_KEY
    if not (subscriber_cert.is_file() and subscriber_key.is_file()):
        cert, key = issue_gateway_cert(ca_cert, ca_key, SUBSCRIBER_NAME)
        write_cert(subscriber_cert, cert)
        write_key(subscriber_key, key)
        created += [subscriber_cert, subscriber_key]
    gateways: dict[str, tuple[Path, Path, Path]] = {}
    for gateway_id in gateway_ids:
        cert_path, key_path, config_path = gateway_paths(out, gateway_id)
        if not (cert_path.is_file() and key_path.is_file()):
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            cert, key = issue_gateway_cert(ca_cert, ca_key, gateway_id, key_type)
            write_cert(cert_path, cert)
            write_key(key_path, key)
            created += [cert_path, key_path]
        config = gateway_config(
            gateway_id,
            endpoint or f"{host}:8883",
            cert_path,
            key_path,
            base.ca_cert,
            publish_interval_seconds=publish_interval_seconds,
        )
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        created.append(config_path)
        gateways[gateway_id] = (cert_path, key_path, config_path)
    return GatewayPki(
        out,
        base.ca_cert,
        base.server_cert,
        base.server_key,
        subscriber_cert,
        subscriber_key,
        gateways,
        created,
    )
