"""A custom ``tls.ca_file`` whose CA has the name of a bundled Tesla CA (spec §17 note 11).

The production bundle holds an RSA ``Tesla Motors Products CA``. A development CA of the
same name is fine when it is EC (``fleetgate certs init``) or carries key identifiers; an
RSA one without them makes OpenSSL pick the bundled namesake and refuse its vehicles, and
the listener says so at start-up.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect

from fleetgate.pki import DEV_CA_NAME, client_ssl_context, init_pki, write_cert
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK
from tests.integration.tesla.helpers import (
    TIMEOUT,
    VIN,
    handshake_refused,
    receive,
    start_server,
    stream_frame,
    url,
)

pytestmark = pytest.mark.integration


def _window() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)


def rsa_pki(directory: Path, key_identifiers: bool) -> tuple[Path, Path, Path]:
    """An RSA CA named like Tesla's and one vehicle certificate: (ca, cert, key) paths."""
    ca_key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_NAME)])
    start, end = _window()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if key_identifiers:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
    ca = builder.sign(ca_key, hashes.SHA256())
    key = rsa.generate_private_key(65537, 2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, VIN)]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if key_identifiers:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "vehicle.crt", directory / "vehicle.key"
    write_cert(paths[0], ca)
    write_cert(paths[1], cert)
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize("key_identifiers", [True, False])
async def test_rsa_ca_named_like_a_tesla_ca(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key_identifiers: bool
) -> None:
    server_pki = init_pki(tmp_path / "server")
    ca, cert, key = rsa_pki(tmp_path / "rsa", key_identifiers)
    tls = {
        "server_cert": str(server_pki.server_cert),
        "server_key": str(server_pki.server_key),
        "ca_file": str(ca),
    }
    with caplog.at_level(logging.WARNING, logger="fleetgate.tesla"):
        server = await start_server(tmp_path, None, tls=tls)
    warned = any("no subject key identifier" in r.getMessage() for r in caplog.records)
    context = client_ssl_context(cert, key, server_pki.ca_cert)
    try:
        if key_identifiers:
            assert not warned
            async with await connect(url(server), ssl=context, open_timeout=TIMEOUT) as ws:
                await ws.send(stream_frame())
                assert (await receive(ws)).message_type == MESSAGE_STREAM_ACK
        else:
            assert warned
            assert await handshake_refused(url(server), context)
    finally:
        await server.stop()
