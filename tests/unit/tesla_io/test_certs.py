"""Development PKI and TLS contexts for the Tesla listener."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetgate.cli import main
from fleetgate.config import ConfigError, TlsConfig
from fleetgate.listeners.tesla.tls import ca_bundle, server_ssl_context
from fleetgate.pki import DEV_CA_NAME, init_pki
from fleetgate.protocols.tesla.identity import identity_from_certificate


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_bundles_are_shipped() -> None:
    assert ca_bundle().count("BEGIN CERTIFICATE") == 14
    assert ca_bundle(eng=True).count("BEGIN CERTIFICATE") == 8


def test_init_pki_makes_an_ec_ca_with_the_accepted_name(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, host="telemetry.example.com", vins=["5YJ3E1EA7KF000001"])
    ca = load(pki.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEV_CA_NAME
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    server = load(pki.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "telemetry.example.com" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert, key = pki.vehicles["5YJ3E1EA7KF000001"]
    client = load(cert)
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The core's identity rules accept the client certificate as a vehicle.
    from cryptography.hazmat.primitives.serialization import Encoding

    identity = identity_from_certificate(client.public_bytes(Encoding.DER))
    assert identity.device_id == "5YJ3E1EA7KF000001"
    assert identity.sender_id == "vehicle_device.5YJ3E1EA7KF000001"


def test_init_pki_reuses_the_ca_and_adds_vehicles(tmp_path: Path) -> None:
    first = init_pki(tmp_path, vins=["A"])
    ca_bytes = first.ca_cert.read_bytes()
    second = init_pki(tmp_path, vins=["A", "B"])
    assert second.ca_cert.read_bytes() == ca_bytes
    assert set(second.created) == set(second.vehicles["B"])
    assert load(second.vehicles["B"][0]).issuer == load(first.ca_cert).subject


def test_server_context_requires_client_certificates(tmp_path: Path) -> None:
    pki = init_pki(tmp_path)
    context = server_ssl_context(
        TlsConfig(server_cert=str(pki.server_cert), server_key=str(pki.server_key),
                  ca_file=str(pki.ca_cert))
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    # 14 bundled certificates plus the development CA.
    assert len(context.get_ca_certs()) == 15


def test_missing_tls_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mTLS only"):
        server_ssl_context(TlsConfig())
    with pytest.raises(ConfigError, match="file not found"):
        server_ssl_context(TlsConfig(server_cert=str(tmp_path / "x"), server_key="y"))


def test_bad_custom_ca_is_the_reference_error(tmp_path: Path) -> None:
    pki = init_pki(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=f"custom ca not properly loaded: {bad}"):
        server_ssl_context(
            TlsConfig(server_cert=str(pki.server_cert), server_key=str(pki.server_key),
                      ca_file=str(bad))
        )


def test_certs_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "init", "--out", str(out), "--host", "gw.example",
                 "--vin", "VIN1", "--vin", "VIN2"]) == 0
    text = capsys.readouterr().out
    assert (out / "vehicles" / "VIN2.crt").is_file()
    snippet = json.loads(text[text.index("{"): text.index("}\n}") + 3])
    assert snippet["tls"]["server_cert"] == str(out / "server.crt")
    assert snippet["tls"]["ca_file"] == str(out / "ca.crt")
    assert "--cert-dir" in text
