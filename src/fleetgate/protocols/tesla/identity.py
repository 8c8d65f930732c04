"""Vehicle identity from the verified client certificate (spec §3).

The VIN is never taken from a frame: it is the leaf certificate's Subject CN (dots turned
into dashes). The *client type* comes from the issuer, or, for Tesla's product issuing CAs,
from private extended-key-usage OIDs, with a Subject-OU override for energy products.
Together they form the ``sender_id`` (``vehicle_device.<VIN>``) that the deprecated
``sender_id`` frame field is compared with for unconfigured topics.

Only the leaf of an already *verified* chain may be passed in; this module checks names, not
signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

# Table A: issuers whose leaves carry the client type as a private EKU OID.
OID_ISSUERS: Final = frozenset(
    {
        "Tesla Motors Product Issuing CA",
        "Tesla Motors Product RSA Issuing CA",
        "Tesla Motors GF3 Product Issuing CA",
        "Tesla Motors GF3 Product RSA Issuing CA",
        "Tesla Energy Product Issuing CA",
        "Tesla Energy GF0 Product Issuing CA",
        "Tesla Motors GF0 Product Issuing CA",
        "Tesla Motors GF Austin Product Issuing CA",
        "Tesla Motors GF Berlin Product Issuing CA",
        "Tesla Product Access Issuing CA",
        "Tesla China Product Access Issuing CA",
        "Tesla GF0 Product Access Issuing CA",
        "Tesla GF3 Product Access Issuing CA",
        "Tesla GF Austin Product Access Issuing CA",
        "Tesla GF Berlin Product Access Issuing CA",
    }
)

_TESLA_ARC: Final = "1.3.6.1.4.1.49279.2."
# Table B: EKU OID suffix → client type; ".4.x" are engineering, ".5.x" production OIDs.
_EKU_SUFFIXES: Final = {
    "1": "vehicle_device",
    "11": "vehicle_board_device",
    "2": "energy_device",
    "12": "das_device",
    "14": "vehicle_service",
    "15": "das_service",
    "16": "energy_service",
    "28": "robotics_device",
}
EKU_CLIENT_TYPES: Final = {
    f"{_TESLA_ARC}{env}.{suffix}": client_type
    for env in ("4", "5")
    for suffix, client_type in _EKU_SUFFIXES.items()
}

# Table C: Subject OU values that override the EKU-derived client type.
OU_CLIENT_TYPES: Final = {
    "Solar Inverter": "solar_inverter_device",
    "Gen3 Wall Connector": "wall_connector_device",
}

# Wi-Fi EAP certificates share the issuers but must never open a telemetry session.
EXCLUDED_EKUS: Final = frozenset({f"{_TESLA_ARC}5.1.1"})

# Issuers whose every leaf is a vehicle (older PKI and the test CA name).
VEHICLE_ISSUERS: Final = frozenset({"TeslaMotors", "Tesla Issuing CA", "Tesla Motors Products CA"})
BOARD_ISSUER: Final = "Tesla Motors Products CA"
BOARD_OU: Final = "Tesla Motors SN"

# EKUs Go's x509 knows by name; only the *other* ("unknown") EKUs are searched, as in Go.
STANDARD_EKUS: Final = frozenset(
    {
        "2.5.29.37.0",  # anyExtendedKeyUsage
        "1.3.6.1.5.5.7.3.1",  # serverAuth
        "1.3.6.1.5.5.7.3.2",  # clientAuth
        "1.3.6.1.5.5.7.3.3",  # codeSigning
        "1.3.6.1.5.5.7.3.4",  # emailProtection
        "1.3.6.1.5.5.7.3.5",  # ipsecEndSystem
        "1.3.6.1.5.5.7.3.6",  # ipsecTunnel
        "1.3.6.1.5.5.7.3.7",  # ipsecUser
        "1.3.6.1.5.5.7.3.8",  # timeStamping
        "1.3.6.1.5.5.7.3.9",  # OCSPSigning
        "1.3.6.1.4.1.311.10.3.3",  # Microsoft server gated crypto
        "2.16.840.1.113730.4.1",  # Netscape server gated crypto
        "1.3.6.1.4.1.311.2.1.22",  # Microsoft commercial code signing
        "1.3.6.1.4.1.311.61.1.1",  # Microsoft kernel code signing
    }
)


class IdentityError(ValueError):
    """The certificate does not identify a Tesla device; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VehicleIdentity:
    """Who is on the other end of a socket: the VIN and the kind of Tesla device."""

    device_id: str
    client_type: str

    @property
    def sender_id(self) -> str:
        return f"{self.client_type}.{self.device_id}"


def _last_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    # Go's pkix.Name keeps the last attribute when several CNs are present.
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return ""
    value = attrs[-1].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _all_attrs(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    out = []
    for attr in name.get_attributes_for_oid(oid):
        value = attr.value
        out.append(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return out


def _unknown_ekus(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return []
    return [oid.dotted_string for oid in ext.value if oid.dotted_string not in STANDARD_EKUS]


def identity_from_parts(
    *, subject_cn: str, issuer_cn: str, subject_ous: list[str], unknown_ekus: list[str]
) -> VehicleIdentity:
    """The §3 decision on already-extracted certificate names (pure; easy to table-test)."""
    device_id = subject_cn.replace(".", "-")
    if not device_id:
        # Deviation: Go would accept an empty CN and produce records with an empty VIN.
        raise IdentityError("certificate has no subject common name")
    if issuer_cn in OID_ISSUERS:
        for oid in unknown_ekus:
            if oid in EXCLUDED_EKUS:
                raise IdentityError("excluded certificate")
            client_type = EKU_CLIENT_TYPES.get(oid)
            if client_type is not None:
                for ou in subject_ous:
                    if ou in OU_CLIENT_TYPES:
                        return VehicleIdentity(device_id, OU_CLIENT_TYPES[ou])
                return VehicleIdentity(device_id, client_type)
        raise IdentityError("unauthorized certificate")
    if issuer_cn in VEHICLE_ISSUERS:
        if issuer_cn == BOARD_ISSUER and subject_ous and subject_ous[0] == BOARD_OU:
            return VehicleIdentity(device_id, "vehicle_board_device")
        return VehicleIdentity(device_id, "vehicle_device")
    raise IdentityError("unauthorized certificate")


def identity_from_certificate(der: bytes) -> VehicleIdentity:
    """Identity of the verified leaf certificate ``der`` (DER bytes, e.g. from
    ``ssl.SSLObject.getpeercert(binary_form=True)``)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        subject_cn = _last_attr(cert.subject, NameOID.COMMON_NAME)
        issuer_cn = _last_attr(cert.issuer, NameOID.COMMON_NAME)
        subject_ous = _all_attrs(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        unknown_ekus = _unknown_ekus(cert)
    except ValueError as exc:  # malformed DER or extension
        raise IdentityError(f"unreadable certificate: {exc}") from exc
    return identity_from_parts(
        subject_cn=subject_cn,
        issuer_cn=issuer_cn,
        subject_ous=subject_ous,
        unknown_ekus=unknown_ekus,
    )
