"""The base of every configuration section, and the one error configuration problems raise.

Sections are pydantic models: typed, with defaults, and unknown keys filtered out before
validation (``fleetgate.config`` warns about each by its dotted path). Sink modules declare
their own sections with this base, so the config file's ``kafka``, ``redis``... keys are
described where they are used.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(Exception):
    """A configuration problem, described in one line that names the key."""


class Section(BaseModel):
    """Base of every config section: typed, and unknown keys already filtered out."""

    model_config = ConfigDict(extra="ignore", validate_default=True)


class TlsFiles(Section):
    """A ``tls`` block: certificate, key and CA files (Tesla's config.json shape).

    For the vehicle listener these are the server's pair and the extra client CAs; for a
    sink they are the client pair presented to the backend and the CA of its server.
    """

    server_cert: str | None = None
    server_key: str | None = None
    ca_file: str | None = None


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming the first invalid key (``kinesis.max_retries: ...``) and its value."""
    first = error.errors()[0]
    parts = [prefix] if prefix else []
    parts += [str(part) for part in first["loc"]]
    location = ".".join(parts) or "config"
    message = str(first["msg"]).removeprefix("Value error, ")
    value = first.get("input")
    # The value helps fix a typo, but a secret's value never goes to a terminal or a log.
    secret = any(word in location.lower() for word in ("password", "secret", "token"))
    shown = f" (got {value!r})" if not isinstance(value, dict | list) and not secret else ""
    return f"{location}: {message}{shown}"


S = TypeVar("S", bound=Section)


def validate_section(model: type[S], data: object, name: str) -> S:
    """``model.model_validate(data)``, failing with a one-line :class:`ConfigError`."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, name)) from None
