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
    """Configuration problems, each described in one line that names the key.

    ``ConfigError("line")`` carries one problem; :meth:`of` gathers several, so a config
    with many mistakes is reported whole instead of one start-up at a time.
    """

    def __init__(self, *problems: str) -> None:
        self.problems: tuple[str, ...] = problems or ("invalid configuration",)
        super().__init__("\n".join(self.problems))

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        return cls(*problems)


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
    return describe_validation_errors(error, prefix)[0]


def describe_validation_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per invalid key (``kinesis.max_retries: ...``), each with its value."""
    lines = []
    for problem in error.errors():
        parts = [prefix] if prefix else []
        parts += [str(part) for part in problem["loc"]]
        location = ".".join(parts) or "config"
        message = str(problem["msg"]).removeprefix("Value error, ")
        value = problem.get("input")
        # The value helps fix a typo, but a secret's value never goes to a terminal or a log.
        secret = any(word in location.lower() for word in ("password", "secret", "token"))
        shown = f" (got {value!r})" if not isinstance(value, dict | list) and not secret else ""
        lines.append(f"{location}: {message}{shown}")
    return lines


S = TypeVar("S", bound=Section)


def validate_section(model: type[S], data: object, name: str) -> S:
    """``model.model_validate(data)``, failing with a one-line :class:`ConfigError`."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.of(describe_validation_errors(exc, name)) from None
