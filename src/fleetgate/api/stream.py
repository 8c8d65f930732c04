"""``/stream``: live records over a WebSocket, for dashboards and ``fleetgate stream``.

Protocol (text frames, JSON):

* **Sign in** with a token holding the ``stream`` scope: an ``Authorization: Bearer`` header,
  a ``token`` query parameter, or, when the request carries neither, a first message
  ``{"type": "auth", "token": "..."}`` within ``api.stream.auth_timeout_s``. A refusal is an
  ``{"type": "error", "error": code, "detail": reason}`` message, then close code 4401
  (4403: the token lacks the scope).
* **Filters** on connect, as query parameters (repeated or comma-separated):
  ``device_id``, ``source``, ``topic``, ``signal``; changed at any time with
  ``{"type": "filter", "device_id": [...], ...}`` (keys left out match everything).
* **Records**: each in its one JSON form, one object per message; with ``batch=1`` a JSON
  array of them per message (up to ``batch_max_records``, gathered for ``batch_linger_ms``).
* **Control messages** carry a ``type`` (records never do): ``ready`` after sign-in,
  ``filter`` confirming a change, ``dropped`` (``count`` records were lost because the client
  read too slowly; ``total`` since connecting), ``pong`` answering ``{"type": "ping"}``,
  ``error``. A fresh token may be sent as ``{"type": "auth", ...}`` before the current one
  expires; when it expires the stream closes with 4401 ``token_expired``.
* A client that takes nothing while its buffer overflows for ``stall_timeout_s`` is closed
  with 4408; WebSocket pings keep idle connections alive (and find dead ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from fleetgate.api.auth import Authenticator, AuthError, Principal, bearer_token
from fleetgate.config import StreamConfig
from fleetgate.observability import metrics
from fleetgate.pipeline.hub import (
    Batch,
    LiveHub,
    StreamFilter,
    Subscription,
    parse_filter_values,
)
from fleetgate.records import record_jsons

log = logging.getLogger("fleetgate.api.stream")

CLOSE_BAD_REQUEST: Final = 4400
CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_TOO_SLOW: Final = 4408
CLOSE_TRY_AGAIN_LATER: Final = 1013
# What a close frame's reason may hold (125 bytes of payload less the code).
MAX_REASON_BYTES: Final = 123
# A filter naming more values than this is refused (a typo'd loop, not a dashboard).
MAX_FILTER_VALUES: Final = 10_000
# Bound on sending the close frame to a client that reads nothing.
CLOSE_TIMEOUT_S: Final = 5.0
FILTER_KEYS: Final = ("device_id", "source", "topic", "signal")


def filter_from_values(values: dict[str, list[str]]) -> StreamFilter:
    """A :class:`StreamFilter` from ``{"device_id": [...], ...}`` (comma-separated allowed)."""
    sets = {key: parse_filter_values(values.get(key, ())) for key in FILTER_KEYS}
    if sum(len(found) for found in sets.values()) > MAX_FILTER_VALUES:
        raise ValueError(f"a filter may name at most {MAX_FILTER_VALUES} values")
    return StreamFilter(
        device_ids=sets["device_id"],
        sources=sets["source"],
        topics=sets["topic"],
        signals=sets["signal"],
    )


def filter_from_message(body: dict[str, Any]) -> StreamFilter:
    unknown = sorted(set(body) - {"type", *FILTER_KEYS})
    if unknown:
        raise ValueError(f"unknown filter key {unknown[0]!r}; known: {', '.join(FILTER_KEYS)}")
    values: dict[str, list[str]] = {}
    for key in FILTER_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            values[key] = [value]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values[key] = value
        else:
            raise ValueError(f"{key}: expected a string or a list of strings")
    return filter_from_values(values)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _reason(text: str) -> str:
    encoded = text.encode()[:MAX_REASON_BYTES]
    return encoded.decode(errors="ignore")


class StreamSession:
    """One ``/stream`` connection: sign-in, then a sender and a receiver until either ends."""

    def __init__(
        self, websocket: WebSocket, hub: LiveHub, auth: Authenticator, settings: StreamConfig
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.auth = auth
        self.settings = settings
        self.principal: Principal | None = None
        self.subscription: Subscription | None = None
        self.sender: asyncio.Task[None] | None = None
        self.batch = _truthy(websocket.query_params.get("batch"))

    async def run(self) -> None:
        await self.websocket.accept()
        principal = await self._sign_in()
        if principal is None:
            return
        self.principal = principal
        query = self.websocket.query_params
        try:
            stream_filter = filter_from_values({key: query.getlist(key) for key in FILTER_KEYS})
        except ValueError as exc:
            await self._refuse(CLOSE_BAD_REQUEST, "bad_filter", str(exc))
            return
        if self.hub.clients >= self.settings.max_clients:
            await self._refuse(
                CLOSE_TRY_AGAIN_LATER,
                "too_many_clients",
                f"the server already streams to {self.settings.max_clients} clients",
            )
            return
        self.subscription = self.hub.subscribe(
            stream_filter,
            self.settings.buffer_records,
            self.settings.stall_timeout_s,
            on_evict=self._evicted,
        )
        try:
            await self._send_control(
                {
                    "type": "ready",
                    "subject": principal.subject,
                    "filter": stream_filter.as_json(),
                    "batch": self.batch,
                    "expires_at": principal.expires_at,
                }
            )
            await self._serve()
        except (WebSocketDisconnect, OSError):
            pass
        finally:
            self.subscription.close()

    # -- sign-in -------------------------------------------------------------------------------
    async def _sign_in(self) -> Principal | None:
        if not self.auth.enabled:
            return self.auth.verify(None)
        websocket = self.websocket
        token = bearer_token(websocket.headers.get("authorization"))
        token = token or websocket.query_params.get("token")
        if not token:
            token = await self._first_message_token()
            if token is None:
                return None
        try:
            return self.auth.verify(token, "stream")
        except AuthError as exc:
            code = CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED
            await self._refuse(code, exc.code, exc.message)
            return None

    async def _first_message_token(self) -> str | None:
        try:
            message = await asyncio.wait_for(
                self.websocket.receive(), timeout=self.settings.auth_timeout_s
            )
        except TimeoutError:
            message = None
        if message is not None and message["type"] == "websocket.disconnect":
            return None
        body = self._parse(message) if message is not None else None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            metrics.labelled(metrics.AUTH_FAILURES, "missing_token").inc()
            await self._refuse(
                CLOSE_UNAUTHORIZED,
                "missing_token",
                "no token: send 'Authorization: Bearer <token>', ?token=<token>, or "
                f'{{"type": "auth", "token": "<token>"}} within {self.settings.auth_timeout_s:g} s',
            )
            return None
        return token

    async def _refuse(self, code: int, error: str, detail: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self._send_control({"type": "error", "error": error, "detail": detail})
            await self.websocket.close(code, _reason(f"{error}: {detail}"))

    # -- streaming -----------------------------------------------------------------------------
    async def _serve(self) -> None:
        self.sender = asyncio.create_task(self._send_loop(), name="stream-send")
        receiver = asyncio.create_task(self._receive_loop(), name="stream-receive")
        tasks = {self.sender, receiver}
        try:
            while True:
                expires_at = self.principal.expires_at if self.principal else None
                timeout = None if expires_at is None else max(0.0, expires_at - time.time())
                done, _ = await asyncio.wait(
                    tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    break
                if self.principal and self.principal.expires_at == expires_at:
                    await self._refuse(CLOSE_UNAUTHORIZED, "token_expired", "token expired")
                    return
            subscription = self.subscription
            if subscription is not None and subscription.evicted:
                await self._close_slow(subscription)
                return
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, WebSocketDisconnect | OSError):
                        raise exc  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _evicted(self) -> None:
        # Called synchronously by the hub: the sender may be stuck writing to this client.
        if self.sender is not None:
            self.sender.cancel()

    async def _close_slow(self, subscription: Subscription) -> None:
        detail = (
            f"too slow: {subscription.dropped_total} records dropped and none taken "
            f"for {self.settings.stall_timeout_s:g} s"
        )
        log.info("stream: disconnecting %s: %s", self._peer(), detail)
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(
                self.websocket.close(CLOSE_TOO_SLOW, _reason(detail)), CLOSE_TIMEOUT_S
            )

    async def _send_loop(self) -> None:
        subscription = self.subscription
        assert subscription is not None
        linger = self.settings.batch_linger_ms / 1000 if self.batch else 0.0
        limit = self.settings.batch_max_records
        while not subscription.evicted:
            await subscription.wait()
            if linger:
                await asyncio.sleep(linger)
            while not subscription.evicted:
                batches, dropped = subscription.take(limit)
                if dropped:
                    await self._send_control(
                        {"type": "dropped", "count": dropped, "total": subscription.dropped_total}
                    )
                if not batches:
                    break
                await self._send_batches(batches, subscription.filter)
                if not subscription.buffered:
                    break

    async def _send_batches(self, batches: list[Batch], stream_filter: StreamFilter) -> None:
        send = self.websocket.send_text
        count = sum(len(batch) for batch in batches)
        if self.batch and not stream_filter.signals:
            # Each batch's JSON is joined once for all clients; only the brackets are ours.
            items = b",".join([batch.joined_json() for batch in batches])
            await send((b"[" + items + b"]").decode())
            metrics.STREAM_MESSAGES.inc()
            metrics.STREAM_RECORDS.inc(count)
            return
        records = [record for batch in batches for record in batch.records]
        if stream_filter.signals:
            forms = [orjson.dumps(stream_filter.record_json_dict(record)) for record in records]
        else:
            forms = record_jsons(records)
        if self.batch:
            await send((b"[" + b",".join(forms) + b"]").decode())
            metrics.STREAM_MESSAGES.inc()
        else:
            for form in forms:
                await send(form.decode())
            metrics.STREAM_MESSAGES.inc(len(forms))
        metrics.STREAM_RECORDS.inc(count)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            body = self._parse(message)
            if not isinstance(body, dict):
                await self._error("bad_message", "expected a JSON object with a 'type'")
                continue
            kind = body.get("type")
            if kind == "ping":
                await self._send_control({"type": "pong", "timestamp": body.get("timestamp")})
            elif kind == "filter":
                await self._change_filter(body)
            elif kind == "auth":
                if not await self._refresh(body.get("token")):
                    return
            else:
                await self._error(
                    "bad_message", f"unknown message type {kind!r}; known: ping, filter, auth"
                )

    async def _change_filter(self, body: dict[str, Any]) -> None:
        assert self.subscription is not None
        try:
            stream_filter = filter_from_message(body)
        except ValueError as exc:
            await self._error("bad_filter", str(exc))
            return
        self.subscription.set_filter(stream_filter)
        await self._send_control({"type": "filter", "filter": stream_filter.as_json()})

    async def _refresh(self, token: object) -> bool:
        """A new token for this stream (before the current one expires); False: refused."""
        try:
            principal = self.auth.verify(token if isinstance(token, str) else None, "stream")
        except AuthError as exc:
            code = CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED
            await self._refuse(code, exc.code, exc.message)
            return False
        self.principal = principal
        await self._send_control({"type": "auth", "expires_at": principal.expires_at})
        return True

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _parse(message: Mapping[str, Any]) -> object:
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None

    async def _error(self, error: str, detail: str) -> None:
        await self._send_control({"type": "error", "error": error, "detail": detail})

    async def _send_control(self, body: dict[str, Any]) -> None:
        if self.websocket.application_state is WebSocketState.CONNECTED:
            await self.websocket.send_text(orjson.dumps(body).decode())
            metrics.STREAM_MESSAGES.inc()

    def _peer(self) -> str:
        client = self.websocket.client
        return f"{client.host}:{client.port}" if client else "a client"


def add_stream_route(
    api: FastAPI, hub: LiveHub, auth: Authenticator, settings: StreamConfig
) -> None:
    """Serve ``/stream`` from ``hub`` on ``api``."""

    @api.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        await StreamSession(websocket, hub, auth, settings).run()
