"""A small client for the three Fleet API calls an owner needs (standard library only).

Requests go to ``base_url`` (the owner's vehicle-command proxy, which signs the telemetry
configuration, or Fleet API itself for reads) with ``Authorization: Bearer <token>``. Every
failure becomes one :class:`FleetApiError` line that says what to do; the token never
appears in it. Redirects are not followed (they would carry the token to another host),
and plain ``http`` is accepted for loopback addresses only.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from fleetgate import __version__
from fleetgate.protocols.tesla.fleet_config import reply_error

PATH_CONFIGURE: Final = "/api/1/vehicles/fleet_telemetry_config"
MAX_REPLY_BYTES: Final = 1024 * 1024


class FleetApiError(Exception):
    """A Fleet API call failed; the message is one line for a person."""


def vehicle_path(vin: str, endpoint: str) -> str:
    """``/api/1/vehicles/{vin}/{endpoint}`` with the VIN safely quoted."""
    return f"/api/1/vehicles/{urllib.parse.quote(vin, safe='')}/{endpoint}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx reply then surfaces as an HTTPError


@dataclass(frozen=True, slots=True)
class FleetApi:
    """Calls to ``base_url`` with a bearer ``token``; ``ca_file`` trusts a private CA."""

    base_url: str
    token: str
    ca_file: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise FleetApiError(
                f"base URL {self.origin!r} is not an http(s) URL "
                "(for example https://localhost:4443 for a local vehicle-command proxy)"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise FleetApiError(
                f"refusing to send the access token over plain http to {parts.hostname}; use https"
            )
        if not self.token or any(char.isspace() for char in self.token):
            raise FleetApiError("the access token is empty or holds whitespace")

    @property
    def origin(self) -> str:
        """The base URL without credentials or query, for messages."""
        parts = urllib.parse.urlsplit(self.base_url.strip())
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"

    def url(self, path: str) -> str:
        base = self.origin
        # TESLA_API_BASE_URL is sometimes given with the /api/1 prefix already.
        if base.endswith("/api/1") and path.startswith("/api/1/"):
            base = base[: -len("/api/1")]
        return base + path

    def post(self, path: str, body: Any, *, what: str) -> Any:
        return self._call("POST", path, json.dumps(body).encode(), what=what)

    def get(self, path: str, *, what: str) -> Any:
        return self._call("GET", path, None, what=what)

    # -- internals --------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise FleetApiError(f"cannot load the CA file {self.ca_file}: {exc}") from None

    def _call(self, method: str, path: str, data: bytes | None, *, what: str) -> Any:
        url = self.url(path)
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", f"fleetgate/{__version__}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._context()), _NoRedirects()
        )
        try:
            with opener.open(request, timeout=self.timeout) as reply:
                raw = reply.read(MAX_REPLY_BYTES)
        except urllib.error.HTTPError as exc:
            raise FleetApiError(self._redact(self._http_error(exc, what))) from None
        except urllib.error.URLError as exc:
            raise FleetApiError(self._redact(self._transport_error(exc.reason))) from None
        except (OSError, http.client.HTTPException) as exc:
            raise FleetApiError(self._redact(self._transport_error(exc))) from None
        try:
            return json.loads(raw)
        except ValueError:
            text = raw[:80].decode("utf-8", "replace")
            raise FleetApiError(
                self._redact(f"{what}: the reply from {url} is not JSON: {text!r}")
            ) from None

    def _http_error(self, exc: urllib.error.HTTPError, what: str) -> str:
        try:
            body = json.loads(exc.read(MAX_REPLY_BYTES))
        except (ValueError, OSError):
            body = None
        detail = reply_error(body)
        status = f"HTTP {exc.code}" + (f": {detail}" if detail else f" {exc.reason}")
        code = exc.code
        if code == 401:
            return (
                f"{what}: the access token was refused ({status}); "
                "set a current token in TESLA_ACCESS_TOKEN"
            )
        if code == 403:
            return f"{what}: not allowed ({status}); check the token's scopes and the VIN"
        if code == 404:
            return (
                f"{what}: not found ({status}); check the VIN and that {self.origin} is "
                "the vehicle-command proxy or Fleet API"
            )
        if code == 408:
            return f"{what}: the vehicle did not answer ({status}); it may be asleep or offline"
        if 300 <= code < 400:
            location = exc.headers.get("Location", "?") if exc.headers else "?"
            return f"{what}: {self.origin} redirects to {location} ({status}); use that base URL"
        return f"{what}: {status} from {self.origin}"

    def _transport_error(self, reason: object) -> str:
        origin = self.origin
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (
                f"TLS: the certificate of {origin} is not trusted "
                f"({reason.verify_message or reason.reason}); pass --api-ca with the "
                "certificate of the proxy's CA (or its self-signed certificate)"
            )
        if isinstance(reason, ssl.SSLError):
            return f"TLS handshake with {origin} failed: {reason.reason or reason}"
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot reach {origin}: connection refused (is the proxy running?)"
        if isinstance(reason, socket.gaierror):
            return f"cannot reach {origin}: the host name does not resolve"
        if isinstance(reason, TimeoutError):
            return f"cannot reach {origin}: no answer within {self.timeout:g} s"
        if isinstance(reason, OSError):
            return f"cannot reach {origin}: {reason.strerror or reason}"
        return f"cannot reach {origin}: {reason}"

    def _redact(self, text: str) -> str:
        # Defensive: nothing above formats the token, but a server might echo it.
        return text.replace(self.token, "<token>") if self.token else text
