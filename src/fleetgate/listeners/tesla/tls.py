"""Trust store and TLS context of the Tesla vehicle listener.

Vehicles authenticate with client certificates issued by Tesla's CAs. The listener trusts
the bundled production CA bundle (``ca/prod_ca.crt``, or ``ca/eng_ca.crt`` when
``use_default_eng_ca`` is set) and appends the PEM certificates of ``tls.ca_file``, exactly
as the reference server does.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.config import ConfigError, TlsConfig
from fleetgate.listeners.tesla.tls_alerts import watch_refusals

if TYPE_CHECKING:
    from cryptography import x509

CA_DIR = Path(__file__).parent / "ca"


def ca_bundle(eng: bool = False) -> str:
    """PEM text of Tesla's bundled CA certificates (production by default)."""
    return (CA_DIR / ("eng_ca.crt" if eng else "prod_ca.crt")).read_text(encoding="ascii")


def _require_file(key: str, value: str | None) -> str:
    if not value:
        raise ConfigError(
            f"tls.{key}: missing - the telemetry server is mTLS only; "
            "set tls.server_cert and tls.server_key (fleetgate certs init makes a dev set)"
        )
    if not Path(value).is_file():
        raise ConfigError(f"tls.{key}: file not found: {value}")
    return value


def server_ssl_context(tls: TlsConfig, use_eng_ca: bool = False) -> ssl.SSLContext:
    """TLS context of the vehicle listener: client certificate required and verified."""
    cert = _require_file("server_cert", tls.server_cert)
    key = _require_file("server_key", tls.server_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    # The WebSocket path is HTTP/1.1; never offer h2.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.server_cert/server_key: cannot load: {exc}") from None
    context.load_verify_locations(cadata=ca_bundle(use_eng_ca))
    if tls.ca_file:
        try:
            text = Path(tls.ca_file).read_text(encoding="ascii")
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ValueError("no PEM certificate")
            context.load_verify_locations(cadata=text)
        except (OSError, ValueError, ssl.SSLError):
            raise ConfigError(f"custom ca not properly loaded: {tls.ca_file}") from None
    # A refused vehicle certificate must leave a log line and a metric, not silence.
    watch_refusals(context, "tesla")
    return context


def ca_file_warnings(ca_pem: str, use_eng_ca: bool = False) -> list[str]:
    """Problems OpenSSL will have with ``tls.ca_file`` next to the bundled Tesla CAs.

    A custom CA that shares its subject name with a bundled CA of another key type, and
    whose issued certificates carry no key identifiers, lets OpenSSL pick the bundled
    namesake as issuer and refuse vehicles the custom CA signed (spec section 17, note 11).
    """
    if not _may_share_names(ca_pem, use_eng_ca):
        return []
    # Only then the certificates are parsed: cryptography costs a server ~10 MB of memory.
    from cryptography import x509

    bundled: dict[x509.Name, list[x509.Certificate]] = {}
    for cert in x509.load_pem_x509_certificates(ca_bundle(use_eng_ca).encode()):
        bundled.setdefault(cert.subject, []).append(cert)
    warnings = []
    for cert in x509.load_pem_x509_certificates(ca_pem.encode()):
        namesakes = bundled.get(cert.subject, [])
        if not namesakes or any(cert == other for other in namesakes):
            continue
        try:
            cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            continue
        except x509.ExtensionNotFound:
            pass
        warnings.append(
            f"tls.ca_file: {cert.subject.rfc4514_string()} has the name of a bundled Tesla CA "
            "but no subject key identifier; OpenSSL may choose the bundled certificate and "
            "refuse clients it issued. Use an EC CA with key identifiers "
            "(fleetgate certs init makes one)."
        )
    return warnings


def _subjects(pem: str) -> list[Any]:
    """Subject names of the CA certificates in ``pem``, as :mod:`ssl` decodes them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pem)
    return [cert["subject"] for cert in context.get_ca_certs()]


def _may_share_names(ca_pem: str, use_eng_ca: bool) -> bool:
    """Whether a certificate of ``ca_pem`` may have a bundled CA's subject name (the only
    case :func:`ca_file_warnings` warns about); ``True`` when unsure."""
    try:
        custom = _subjects(ca_pem)
        bundled = set(_subjects(ca_bundle(use_eng_ca)))
    except (ssl.SSLError, ValueError):
        return True
    # ssl lists CA certificates only: with any other in the file, look at them all.
    if len(custom) < ca_pem.count("-----BEGIN CERTIFICATE-----"):
        return True
    return any(subject in bundled for subject in custom)
