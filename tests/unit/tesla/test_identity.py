"""Vehicle identity from client certificates (spec §3), with real generated certificates."""

from __future__ import annotations

import datetime as dt
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetgate.protocols.tesla.identity import (
    OID_ISSUERS,
    IdentityError,
    VehicleIdentity,
    identity_from_certificate,
    identity_from_parts,
)

ARC = "1.3.6.1.4.1.49279.2."
WIFI_EAP = ARC + "5.1.1"
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string


@cache
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str | list[str] = "device-1",
    issuer: str = "Tesla Motors Products CA",
    ous: tuple[str, ...] = (),
    ekus: tuple[str, ...] | None = None,
) -> bytes:
    """DER leaf with the given names/EKUs, signed by an EC key under ``issuer``'s name."""
    cns = [cn] if isinstance(cn, str) else cn
    subject = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
    subject += [x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cns]
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
    )
    if ekus is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in ekus]), critical=False
        )
    cert = builder.sign(_key(), hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


# -- issuer-name rules (step 3) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "ous", "client_type"),
    [
        ("Tesla Motors Products CA", (), "vehicle_device"),
        ("Tesla Issuing CA", (), "vehicle_device"),
        ("TeslaMotors", (), "vehicle_device"),
        ("Tesla Motors Products CA", ("Tesla Motors SN",), "vehicle_board_device"),
        # only the *first* OU counts for the board special case
        ("Tesla Motors Products CA", ("Other", "Tesla Motors SN"), "vehicle_device"),
        # and only under the Products CA
        ("Tesla Issuing CA", ("Tesla Motors SN",), "vehicle_device"),
        ("TeslaMotors", ("Tesla Motors SN",), "vehicle_device"),
    ],
)
def test_vehicle_issuers(issuer: str, ous: tuple[str, ...], client_type: str) -> None:
    ident = identity_from_certificate(make_cert(issuer=issuer, ous=ous))
    assert ident == VehicleIdentity("device-1", client_type)
    assert ident.sender_id == f"{client_type}.device-1"


def test_vehicle_issuer_ignores_ekus_even_wifi_eap() -> None:
    ident = identity_from_certificate(make_cert(ekus=(WIFI_EAP,)))
    assert ident.client_type == "vehicle_device"


def test_common_name_dots_become_dashes() -> None:
    assert identity_from_certificate(make_cert(cn="5YJ.3E1.EA7")).device_id == "5YJ-3E1-EA7"


def test_last_common_name_wins() -> None:
    assert identity_from_certificate(make_cert(cn=["first", "second"])).device_id == "second"


def test_unknown_issuer_is_unauthorized() -> None:
    with pytest.raises(IdentityError, match="unauthorized certificate"):
        identity_from_certificate(make_cert(issuer="Some Other CA", ekus=(ARC + "5.1",)))


# -- OID issuers (step 2) -----------------------------------------------------------------

TABLE_B = {
    "1": "vehicle_device",
    "11": "vehicle_board_device",
    "2": "energy_device",
    "12": "das_device",
    "14": "vehicle_service",
    "15": "das_service",
    "16": "energy_service",
    "28": "robotics_device",
}


@pytest.mark.parametrize("env", ["4", "5"])
@pytest.mark.parametrize(("suffix", "client_type"), sorted(TABLE_B.items()))
def test_eku_table(env: str, suffix: str, client_type: str) -> None:
    der = make_cert(issuer="Tesla Motors Product Issuing CA", ekus=(ARC + f"{env}.{suffix}",))
    assert identity_from_certificate(der) == VehicleIdentity("device-1", client_type)


@pytest.mark.parametrize("issuer", sorted(OID_ISSUERS))
def test_every_oid_issuer_uses_ekus(issuer: str) -> None:
    assert identity_from_certificate(make_cert(issuer=issuer, ekus=(ARC + "5.2",))).client_type == (
        "energy_device"
    )
    with pytest.raises(IdentityError, match="unauthorized"):
        identity_from_certificate(make_cert(issuer=issuer))  # no EKU extension at all


@pytest.mark.parametrize(
    ("ous", "client_type"),
    [
        (("Solar Inverter",), "solar_inverter_device"),
        (("Gen3 Wall Connector",), "wall_connector_device"),
        (("Unrelated", "Gen3 Wall Connector"), "wall_connector_device"),  # any OU, not first
        (("Unrelated",), "energy_device"),
    ],
)
def test_ou_overrides_eku(ous: tuple[str, ...], client_type: str) -> None:
    der = make_cert(issuer="Tesla Energy Product Issuing CA", ous=ous, ekus=(ARC + "5.2",))
    assert identity_from_certificate(der).client_type == client_type


def test_ou_alone_is_not_enough() -> None:
    der = make_cert(
        issuer="Tesla Energy Product Issuing CA", ous=("Solar Inverter",), ekus=(CLIENT_AUTH,)
    )
    with pytest.raises(IdentityError, match="unauthorized"):
        identity_from_certificate(der)


@pytest.mark.parametrize(
    ("ekus", "outcome"),
    [
        ((WIFI_EAP,), "excluded certificate"),
        ((WIFI_EAP, ARC + "5.1"), "excluded certificate"),  # walked in certificate order
        ((ARC + "5.1", WIFI_EAP), "vehicle_device"),
        ((CLIENT_AUTH,), "unauthorized certificate"),  # standard EKUs are not looked at
        ((CLIENT_AUTH, ARC + "4.12"), "das_device"),
        (("1.2.3.4", ARC + "5.14"), "vehicle_service"),  # unknown private OIDs are skipped
        ((ARC + "5.99",), "unauthorized certificate"),
    ],
)
def test_eku_walk(ekus: tuple[str, ...], outcome: str) -> None:
    der = make_cert(issuer="Tesla Motors GF3 Product Issuing CA", ekus=ekus)
    if outcome.endswith("certificate"):
        with pytest.raises(IdentityError) as info:
            identity_from_certificate(der)
        assert info.value.reason == outcome
    else:
        assert identity_from_certificate(der).client_type == outcome


# -- malformed input ----------------------------------------------------------------------


def test_garbage_der_is_identity_error() -> None:
    with pytest.raises(IdentityError, match="unreadable"):
        identity_from_certificate(b"\x30\x03\x02\x01\x00")


def test_missing_common_name_is_refused() -> None:
    der = make_cert(cn=[], ous=("Only OU",))
    with pytest.raises(IdentityError, match="common name"):
        identity_from_certificate(der)


def test_identity_from_parts_matches_certificate_path() -> None:
    assert identity_from_parts(
        subject_cn="a.b",
        issuer_cn="Tesla Motors Products CA",
        subject_ous=["Tesla Motors SN"],
        unknown_ekus=[],
    ) == VehicleIdentity("a-b", "vehicle_board_device")
