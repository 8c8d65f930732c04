"""Which trackers fleetgate knows: every IMEI, a configured list, or a Redis set.

One interface, :class:`DeviceAuthority`: ``check(imei)`` says ``known`` or ``unknown``
from memory (the handshake never waits for a network round trip). Three kinds:

* :class:`AllowAll` (the default): every syntactically valid IMEI is known;
* :class:`StaticList`: ``teltonika.allowed_imeis``;
* :class:`RedisAllowList`: the members of a Redis set (``teltonika.allowed_imeis_redis``),
  read at start and every ``refresh_s``. A read that fails keeps the last list that was
  read and is logged (rate-limited) and counted; until a first read succeeds the list is
  empty, so a strict server refuses every device rather than letting every one in.

:class:`DeviceGate` applies the policy: with ``teltonika.strict_device_auth`` (the default)
an unknown IMEI is refused (TCP: ``00`` and close; UDP: no ack); without it, unknown devices
are accepted and only labelled ``unknown`` on the handshake metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from fleetgate.config import RedisAllowListConfig, TeltonikaConfig
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.observability.ratelimit import LimitedLog

if TYPE_CHECKING:
    # redis-py is imported when a Redis allow-list is configured, not when this module is.
    from redis.asyncio import Redis

log = logging.getLogger("fleetgate.teltonika")

KNOWN: Final = "known"
UNKNOWN: Final = "unknown"
Knowledge = Literal["known", "unknown"]

_REFRESH_FAILED_LOG = LimitedLog(log, "teltonika.allow_list.refresh_failed")


class DeviceAuthority(Protocol):
    """Says whether an IMEI is one of the fleet's; started and stopped with its listener."""

    kind: str

    def check(self, imei: str) -> Knowledge:
        """``known`` or ``unknown``, from memory."""

    async def start(self) -> None:
        """Load what ``check`` needs (a first read of a remote list)."""

    async def stop(self) -> None:
        """Stop refreshing."""

    def health(self) -> dict[str, Any]:
        """State for the listener's ``/health`` entry."""


class AllowAll:
    """Every IMEI is known."""

    kind = "allow_all"

    def check(self, imei: str) -> Knowledge:
        return KNOWN

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind}


class StaticList:
    """The IMEIs of the configuration are known."""

    kind = "static"

    def __init__(self, imeis: list[str]) -> None:
        self._imeis = frozenset(imeis)

    def check(self, imei: str) -> Knowledge:
        return KNOWN if imei in self._imeis else UNKNOWN

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "imeis": len(self._imeis)}


class RedisAllowList:
    """The members of a Redis set are known; the set is read every ``refresh_s``."""

    kind = "redis"

    def __init__(self, settings: RedisAllowListConfig) -> None:
        self.settings = settings
        self._imeis: frozenset[str] = frozenset()
        # Public so a test can point a running list at another server.
        self.client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded_at: float | None = None  # monotonic time of the last good read
        self.last_error: str | None = None

    def check(self, imei: str) -> Knowledge:
        return KNOWN if imei in self._imeis else UNKNOWN

    async def start(self) -> None:
        from redis.asyncio import Redis

        timeout = self.settings.timeout_s
        self.client = Redis.from_url(
            self.settings.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        if not await self.refresh():
            log.error(
                "teltonika allow-list: Redis could not be read at start; until it can, no "
                "IMEI is known",
                extra=fields(key=self.settings.key, error=self.last_error),
            )
        self._task = asyncio.get_running_loop().create_task(
            self._refresh_forever(), name="teltonika-allow-list"
        )

    async def refresh(self) -> bool:
        """Read the set once; on failure keep the last list. True when it was read."""
        assert self.client is not None, "start() first"
        try:
            members = await asyncio.wait_for(
                self.client.smembers(self.settings.key), self.settings.timeout_s
            )
        except Exception as exc:  # any failure of the read keeps the last good list
            self.last_error = f"{type(exc).__name__}: {exc}"
            metrics.labelled(metrics.TELTONIKA_ALLOW_LIST_REFRESHES, "failed").inc()
            _REFRESH_FAILED_LOG.warning(
                "teltonika allow-list: reading Redis failed; keeping the last list",
                extra=fields(key=self.settings.key, error=self.last_error, imeis=len(self._imeis)),
            )
            return False
        imeis = frozenset(
            member.decode("ascii", "replace") if isinstance(member, bytes) else str(member)
            for member in members
        )
        if imeis != self._imeis:
            log.info(
                "teltonika allow-list read",
                extra=fields(key=self.settings.key, imeis=len(imeis)),
            )
        self._imeis = imeis
        self.loaded_at = time.monotonic()
        self.last_error = None
        metrics.labelled(metrics.TELTONIKA_ALLOW_LIST_REFRESHES, "ok").inc()
        return True

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
            self.client = None

    def health(self) -> dict[str, Any]:
        age = None if self.loaded_at is None else round(time.monotonic() - self.loaded_at, 1)
        return {
            "kind": self.kind,
            "imeis": len(self._imeis),
            "last_read_age_s": age,
            "last_error": self.last_error,
        }


def build_authority(settings: TeltonikaConfig) -> DeviceAuthority:
    """The authority the configuration names (allow-all when it names none)."""
    if settings.allowed_imeis_redis is not None:
        return RedisAllowList(settings.allowed_imeis_redis)
    if settings.allowed_imeis is not None:
        return StaticList(settings.allowed_imeis)
    return AllowAll()


@dataclass(frozen=True, slots=True)
class Admission:
    """What the gate decided about one IMEI."""

    device: Knowledge
    allowed: bool


class DeviceGate:
    """The authority plus the policy: strict refuses unknown devices, lax labels them."""

    def __init__(self, authority: DeviceAuthority, strict: bool) -> None:
        self.authority = authority
        self.strict = strict
        # Two possible answers, made once (UDP asks once per datagram).
        self._known = Admission(KNOWN, True)
        self._unknown = Admission(UNKNOWN, not strict)

    @classmethod
    def from_settings(cls, settings: TeltonikaConfig) -> DeviceGate:
        return cls(build_authority(settings), settings.strict_device_auth)

    def admit(self, imei: str) -> Admission:
        return self._known if self.authority.check(imei) == KNOWN else self._unknown

    async def start(self) -> None:
        await self.authority.start()

    async def stop(self) -> None:
        await self.authority.stop()

    def health(self) -> dict[str, Any]:
        return {**self.authority.health(), "strict": self.strict}
