"""JWT bearer tokens for the REST API and ``/stream``: keys, verification, scopes, issuing.

Tokens are signed with the configured key: an HS256 shared secret (``api.auth.secret``,
``JWT_SECRET`` for the Node telemetry server's deployments, or a secret generated into the
data directory on first start) or an RS256 / ES256 key pair. Verification accepts only the
configured algorithm, checks ``exp`` (required by default), ``nbf`` and, when configured,
``iss`` and ``aud``. Scopes travel in the ``scope`` claim (space-separated, as in OAuth) or a
``scopes`` list: ``read`` (REST), ``stream`` (``/stream``), ``command`` (device commands).
A token without scopes gets ``api.auth.unscoped`` (``stream``: what a Node server's token
could do).

Every refusal is an :class:`AuthError` with a short code and a one-line reason; the API
answers 401 (403 for a missing scope) with both in a JSON body, never a stack trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fleetgate.config import ApiAuthConfig
from fleetgate.observability import metrics
from fleetgate.records import format_rfc3339_ms
from fleetgate.settings import ConfigError

log = logging.getLogger("fleetgate.api.auth")

SCOPES: Final = ("read", "stream", "command")
SECRET_FILE_NAME: Final = "api-secret.key"
# HMAC keys shorter than the hash are weak (RFC 7518 section 3.2); warn, still accept them so
# an existing JWT_SECRET keeps working.
MIN_SECRET_BYTES: Final = 32


class AuthError(Exception):
    """A refused token: ``code`` for programs, ``message`` for people, the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}

    def www_authenticate(self) -> str:
        kind = "insufficient_scope" if self.status == 403 else "invalid_token"
        description = self.message.replace('"', "'")
        return f'Bearer error="{kind}", error_description="{description}"'


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for and what it may do."""

    subject: str
    scopes: frozenset[str]
    # Epoch seconds; None for a token without ``exp`` (or with auth disabled).
    expires_at: float | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            held = ", ".join(sorted(self.scopes)) or "none"
            metrics.labelled(metrics.AUTH_FAILURES, "insufficient_scope").inc()
            raise AuthError(
                "insufficient_scope",
                f"this token lacks the {scope!r} scope (it has: {held})",
                status=403,
            )


ANONYMOUS: Final = Principal("anonymous", frozenset(SCOPES))


def parse_scopes(value: str | Iterable[str]) -> frozenset[str]:
    """``"read stream"``, ``"read,stream"`` or a list → a set of known scopes."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    unknown = sorted(set(items) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; known: {', '.join(SCOPES)}")
    return frozenset(items)


def _read_key_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"api.auth.{what}: cannot read {path}: {exc.strerror or exc}") from None


def _data_dir_secret(path: Path) -> tuple[str, bool]:
    """The secret in ``path``, created (0600) when missing; True when created.

    The file appears whole: written under a temporary name, then hard-linked into place,
    which fails if another process (``fleetgate token`` beside a starting server) got there
    first; its secret is then used. A reader never sees a created but still empty file."""
    try:
        return path.read_text(encoding="ascii").strip(), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secret + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_text(encoding="ascii").strip(), False
    finally:
        temporary.unlink(missing_ok=True)
    return secret, True


class Authenticator:
    """Verifies (and, with a private key or secret, issues) the API's tokens."""

    def __init__(self, settings: ApiAuthConfig, data_dir: str | Path) -> None:
        self.settings = settings
        self.algorithm = settings.algorithm
        # True when the secret lives in the data directory (embedded defaults).
        self.key_in_data_dir = False
        self.key_created = False
        self.secret_path: Path | None = None
        self._verify_key: Any = None
        self._sign_key: Any = None
        if settings.enabled:
            self._load_keys(Path(data_dir))

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def can_issue(self) -> bool:
        return self._sign_key is not None

    def _load_keys(self, data_dir: Path) -> None:
        s = self.settings
        if self.algorithm.startswith("HS"):
            if s.secret:
                secret = s.secret
            elif s.secret_file:
                secret = _read_key_file(s.secret_file, "secret_file").decode().strip()
            else:
                self.secret_path = data_dir / SECRET_FILE_NAME
                secret, self.key_created = _data_dir_secret(self.secret_path)
                self.key_in_data_dir = True
                if self.key_created:
                    log.info("api: created the token signing secret %s", self.secret_path)
            if not secret:
                raise ConfigError("api.auth.secret: empty")
            if len(secret.encode()) < MIN_SECRET_BYTES:
                log.warning(
                    "api.auth: the shared secret is shorter than %d bytes; tokens signed with "
                    "it are easier to forge",
                    MIN_SECRET_BYTES,
                )
            self._verify_key = self._sign_key = secret.encode()
            return
        # Key pairs need cryptography; the HS secret (the embedded defaults) does not, and a
        # server that loads none saves ~10 MB.
        from cryptography.hazmat.primitives import serialization

        private_pem = (
            _read_key_file(s.private_key_file, "private_key_file") if s.private_key_file else None
        )
        if private_pem is not None:
            try:
                private = serialization.load_pem_private_key(private_pem, password=None)
            except ValueError as exc:
                raise ConfigError(f"api.auth.private_key_file: not a PEM key: {exc}") from None
            self._sign_key = private
            self._verify_key = private.public_key()
        if s.public_key_file:
            public_pem = _read_key_file(s.public_key_file, "public_key_file")
            try:
                self._verify_key = serialization.load_pem_public_key(public_pem)
            except ValueError as exc:
                raise ConfigError(f"api.auth.public_key_file: not a PEM key: {exc}") from None
        if self._verify_key is None:
            raise ConfigError(
                f"api.auth: {self.algorithm} needs public_key_file (or private_key_file)"
            )

    # -- issuing -------------------------------------------------------------------------------
    def issue(
        self, subject: str, ttl_s: float, scopes: Iterable[str], now: float | None = None
    ) -> str:
        """A token for ``subject`` valid ``ttl_s`` seconds with ``scopes``."""
        if self._sign_key is None:
            raise ConfigError(
                f"api.auth: issuing {self.algorithm} tokens needs private_key_file"
                if not self.algorithm.startswith("HS")
                else "api.auth: authentication is disabled; there is no key to sign with"
            )
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl_s),
            "scope": " ".join(sorted(set(scopes))),
        }
        if self.settings.issuer:
            claims["iss"] = self.settings.issuer
        if self.settings.audience:
            claims["aud"] = self.settings.audience
        if self.algorithm in _HMAC_HASHES:
            return hmac_token(claims, self._sign_key, self.algorithm)
        import jwt

        return jwt.encode(claims, self._sign_key, algorithm=self.algorithm)

    # -- verifying -----------------------------------------------------------------------------
    def verify(self, token: str | None, scope: str | None = None) -> Principal:
        """The principal of ``token``, which must hold ``scope``; :class:`AuthError` if not."""
        if not self.enabled:
            return ANONYMOUS
        if not token:
            metrics.labelled(metrics.AUTH_FAILURES, "missing_token").inc()
            raise AuthError(
                "missing_token",
                "no token: send 'Authorization: Bearer <token>' (fleetgate token prints one)",
            )
        try:
            claims = self._decode(token)
        except AuthError as exc:
            metrics.labelled(metrics.AUTH_FAILURES, exc.code).inc()
            raise
        principal = Principal(
            subject=str(claims.get("sub") or claims.get("userId") or "unknown"),
            scopes=self._scopes_of(claims),
            expires_at=float(claims["exp"]) if "exp" in claims else None,
            claims=claims,
        )
        if scope is not None:
            principal.require(scope)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        import jwt  # loaded with the first request that carries a token

        s = self.settings
        required = ["exp"] if s.require_exp else []
        if s.issuer:
            required.append("iss")
        if s.audience:
            required.append("aud")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthError("invalid_token", f"not a JWT: {exc}") from None
        if header.get("alg") != self.algorithm:
            raise AuthError(
                "invalid_token",
                f"token algorithm {header.get('alg')!r} is not the configured {self.algorithm}",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                issuer=s.issuer,
                audience=s.audience,
                leeway=s.leeway_s,
                options={"require": required, "verify_aud": bool(s.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(
                "token_expired", f"token expired at {self._claim_time(token, 'exp')}"
            ) from None
        except jwt.ImmatureSignatureError:
            raise AuthError(
                "token_not_yet_valid", f"token not valid before {self._claim_time(token, 'nbf')}"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_token", "token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("invalid_token", f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid_token", f"token issuer is not {s.issuer!r}") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid_token", f"token audience is not {s.audience!r}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"invalid token: {exc}") from None
        return claims

    @staticmethod
    def _claim_time(token: str, claim: str) -> str:
        import jwt

        try:
            value = jwt.decode(token, options={"verify_signature": False}).get(claim)
            return format_rfc3339_ms(int(float(str(value)) * 1000))
        except (jwt.InvalidTokenError, TypeError, ValueError):
            return "an unreadable time"

    def _scopes_of(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claims.get("scope", claims.get("scopes"))
        if raw is None:
            return frozenset(self.settings.unscoped)
        items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
        if not isinstance(items, list):
            return frozenset()
        # Unknown scopes are ignored, not fatal: another issuer may add its own.
        return frozenset(str(item) for item in items) & frozenset(SCOPES)

# PyJWT's HMAC algorithms, signed here with the standard library: issuing the dashboard's
# sign-in link at start would otherwise load PyJWT, which imports cryptography (~10 MB of
# the server's memory) whatever the algorithm. Verification stays PyJWT's.
_HMAC_HASHES: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def hmac_token(claims: dict[str, Any], key: bytes, algorithm: str) -> str:
    """The JWS compact form of ``claims`` signed with ``key``: the bytes ``jwt.encode``
    gives for the same claims (its header, its JSON separators)."""
    header = json.dumps({"alg": algorithm, "typ": "JWT"}, separators=(",", ":")).encode()
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signing_input = _b64url(header) + b"." + _b64url(payload)
    signature = hmac.new(key, signing_input, _HMAC_HASHES[algorithm]).digest()
    return (signing_input + b"." + _b64url(signature)).decode()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    stripped = text.strip().lower()
    unit = units.get(stripped[-1:]) if stripped else None
    number = stripped[:-1] if unit is not None else stripped
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (examples: 3600, 90s, 15m, 1h, 7d)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value
