"""``nats``: publish to NATS JetStream, confirmed by the stream's publish ack.

Library: nats-py, the NATS maintainers' asyncio client. Its JetStream ``publish_async``
sends each message at once and resolves a future when the stream acks it, which gives both
ordering (messages leave in call order on one connection) and a bounded pipeline of acks.

Naming (documented in the config reference):

* subject ``<prefix>.<topic>.<device_id>``, with ``prefix`` = ``nats.subject_prefix``, else
  the Tesla ``namespace``, else ``fleetgate``. Characters a subject token cannot hold
  (``.``, ``*``, ``>``, whitespace) in topic or device id become ``_``; an empty token
  becomes ``_``.
* with ``create_stream`` (default), the sink creates stream ``nats.stream`` (default: the
  prefix with ``.`` replaced by ``_``) capturing ``<prefix>.>``; an existing stream with
  that name is used as it is.

Headers: the seven metadata keys (spec §9.2) and ``Nats-Msg-Id``, a SHA-1 of the record's
identity (source, device, topic, both timestamps, txid) and payload. A batch retried after
a lost ack therefore does not duplicate records inside the stream's de-duplication window
(2 minutes by default); identical records (same identity and bytes) are stored once.

Confirmation = every message of the batch got its JetStream ack. At most
``nats.max_in_flight`` acks are awaited at once. A lost connection, a timeout or a missing
stream is transient: the runner retries; the next publish reconnects (the client itself
does not reconnect, so a dead server is noticed at once instead of being buffered for).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from fleetgate.forms import wire_payloads
from fleetgate.observability.redact import redact
from fleetgate.records import Record
from fleetgate.settings import Section
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

if TYPE_CHECKING:
    # nats-py is imported when the sink connects, not when the config is read.
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = logging.getLogger("fleetgate.sinks.nats")

_BAD_TOKEN_CHARS = re.compile(r"[.*>\s]")
_STREAM_NAME_IN_USE = 10058  # JetStream API error: name taken with another configuration


def subject_token(text: str) -> str:
    """``text`` made safe as one subject token."""
    return _BAD_TOKEN_CHARS.sub("_", text) or "_"


def message_id(record: Record, payload: bytes) -> str:
    """Stable de-duplication id: the same record always gets the same id."""
    meta = record.meta or {}
    identity = "\x00".join(
        (
            record.source,
            record.device_id,
            record.topic,
            str(record.created_at),
            str(record.received_at),
            meta.get("txid", ""),
        )
    )
    digest = hashlib.sha1(identity.encode(), usedforsecurity=False)
    digest.update(b"\x00")
    digest.update(payload)
    return digest.hexdigest()


class NatsSettings(Section):
    """The ``nats`` section (fleetgate's; the reference has no NATS dispatcher)."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    subject_prefix: str = ""
    stream: str = ""
    create_stream: bool = True
    publish_timeout_ms: int = Field(5_000, ge=1)
    # Publishes awaiting their JetStream ack at once (the sink's in-flight bound).
    max_in_flight: int = Field(1_000, ge=1)
    connect_timeout_ms: int = Field(2_000, ge=1)


class NatsSink(Sink):
    name: ClassVar[str] = "nats"
    Settings: ClassVar[type[Section]] = NatsSettings
    label: ClassVar[str | None] = "NATS"
    settings: NatsSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        s = self.settings
        self.prefix = s.subject_prefix or context.namespace or "fleetgate"
        self.stream = s.stream or re.sub(r"[.*>\s]", "_", self.prefix)
        self.timeout_s = s.publish_timeout_ms / 1000
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lost = asyncio.Event()
        self._stream_ready = False

    def describe(self) -> str:
        # A server URL may carry user:password@ or a token: never part of a log line.
        servers = ",".join(redact(s).removeprefix("nats://") for s in self.settings.servers)
        return f"nats {servers}"

    def subject(self, record: Record) -> str:
        return f"{self.prefix}.{subject_token(record.topic)}.{subject_token(record.device_id)}"

    async def start(self) -> None:
        await self._ensure_connected()

    async def _ensure_connected(self) -> JetStreamContext:
        if self._nc is not None and self._nc.is_connected and self._js is not None:
            if not self._stream_ready:
                await self._ensure_stream(self._js)
            return self._js
        await self._drop_connection()
        import nats
        import nats.errors

        lost = asyncio.Event()
        self._lost = lost

        async def on_gone() -> None:
            lost.set()

        async def on_error(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        try:
            nc = await nats.connect(
                servers=self.settings.servers,
                name="fleetgate",
                connect_timeout=max(1, round(self.settings.connect_timeout_ms / 1000)),
                allow_reconnect=False,
                # nats-py retries the initial connect per server until this many attempts;
                # keep it to one quick retry: the runner owns retries and backoff.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                disconnected_cb=on_gone,
                closed_cb=on_gone,
                error_cb=on_error,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise TransientSinkError(f"{self.describe()}: {exc or type(exc).__name__}") from exc
        self._nc = nc
        self._js = nc.jetstream(
            timeout=self.timeout_s, publish_async_max_pending=self.settings.max_in_flight
        )
        await self._ensure_stream(self._js)
        return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        import nats.errors
        import nats.js.errors

        if self.settings.create_stream:
            try:
                await js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise PermanentSinkError(f"nats: cannot create stream: {exc}") from exc
                log.info("nats: using existing stream %s as configured", self.stream)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                raise TransientSinkError(f"{self.describe()}: {exc!r}") from exc
        self._stream_ready = True

    async def publish(self, batch: Sequence[Record]) -> None:
        import nats.errors
        import nats.js.errors

        js = await self._ensure_connected()
        decoded = self.context.transmit_decoded
        pending: list[asyncio.Future[Any]] = []
        try:
            try:
                payloads = wire_payloads(batch, decoded)  # in one loop (records.record_jsons)
                for record, payload in zip(batch, payloads, strict=True):
                    headers = self.headers(record)
                    # JetStream drops a second message with the same id (a replay).
                    headers["Nats-Msg-Id"] = headers.get("record_id") or message_id(
                        record, payload
                    )
                    # Waits (in order) while max_in_flight acks are outstanding.
                    pending.append(
                        await js.publish_async(self.subject(record), payload, headers=headers)
                    )
                await self._acks(pending)
            except BaseException:
                for future in pending:
                    future.cancel()  # releases the in-flight slots
                raise
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            if isinstance(exc, nats.js.errors.APIError) and not isinstance(
                exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.NoStreamResponseError
            ):
                raise PermanentSinkError(f"nats: stream refused the batch: {exc}") from exc
            await self._drop_connection()
            raise TransientSinkError(f"{self.describe()}: {exc!r}") from exc

    async def _acks(self, pending: list[asyncio.Future[Any]]) -> None:
        """Wait for every ack, or fail fast when the connection goes away."""
        acks = asyncio.ensure_future(asyncio.gather(*pending))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {acks, lost}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if acks in done:
            acks.result()
            return
        acks.cancel()
        if lost in done:
            import nats.errors

            raise nats.errors.ConnectionClosedError
        raise TimeoutError(f"no JetStream ack within {self.timeout_s:g} s")

    async def _drop_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._stream_ready = False
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), self.timeout_s)
            except Exception as exc:
                log.debug("nats: close failed: %s", exc)

    async def close(self) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await asyncio.wait_for(nc.flush(), self.timeout_s)
            except Exception as exc:
                log.debug("nats: flush on close failed: %s", exc)
        await self._drop_connection()
