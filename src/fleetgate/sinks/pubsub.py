"""``pubsub``: publish records to Google Cloud Pub/Sub.

Library: google-cloud-pubsub, Google's own client. It honours ``PUBSUB_EMULATOR_HOST``
(plain gRPC to an emulator, no credentials) and otherwise Application Default Credentials,
exactly like the reference's Go client, and it batches messages per topic in the
background. Its futures are ``concurrent.futures`` futures; :func:`asyncio.wrap_future`
turns them into awaitables on the event loop.

Names (spec section 11): topic ``<namespace>_<topic>`` in ``pubsub.gcp_project_id``, created
on first use if missing (the reference creates them at start-up for every routed type;
fleetgate's sink does not know the routed types up front, and creating lazily also heals
an emulator that lost its state). Attributes = the seven metadata keys; data =
:func:`~fleetgate.records.wire_payload`.

Confirmation: every message's publish future resolved with a message id. A publish that
cannot finish within ``publish_timeout_s`` raises :class:`TransientSinkError`. Setting both
``PUBSUB_EMULATOR_HOST`` and ``GOOGLE_APPLICATION_CREDENTIALS``, or leaving the project id
empty, is a configuration error at start-up, as in the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fleetgate.records import Record, record_metadata, wire_payload
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

_DEFAULT_PUBLISH_TIMEOUT_S = 10.0
_ADMIN_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 5.0


class PubSubSink(Sink):
    name: ClassVar[str] = "pubsub"

    def __init__(self, config: Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(config, context)
        from fleetgate.config import ConfigError

        self.project = str(config.get("gcp_project_id") or "")
        if not self.project:
            raise ConfigError("pubsub.gcp_project_id: must be set to publish to Pub/Sub")
        if os.environ.get("PUBSUB_EMULATOR_HOST") and os.environ.get(
            "GOOGLE_APPLICATION_CREDENTIALS"
        ):
            raise ConfigError(
                "pubsub: PUBSUB_EMULATOR_HOST and GOOGLE_APPLICATION_CREDENTIALS are both set; "
                "choose the emulator or real Google Cloud"
            )
        timeout_ms = config.get("publish_timeout_ms")
        self.publish_timeout_s = (
            float(timeout_ms) / 1000 if timeout_ms else _DEFAULT_PUBLISH_TIMEOUT_S
        )
        self._publisher: Any = None
        self._topics: set[str] = set()
        self._confirmed: dict[int, Record] = {}

    def describe(self) -> str:
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        where = f"emulator {emulator}" if emulator else "Google Cloud"
        return f"pubsub project {self.project} ({where})"

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{self.destination(topic)}"

    async def start(self) -> None:
        self._ensure_publisher()

    def _ensure_publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            # Flush a batch after 5 ms or 1000 messages: publish() awaits every message,
            # so a long latency would only add to each batch's confirmation time.
            self._publisher = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=1000, max_bytes=9 * 1024 * 1024, max_latency=0.005
                )
            )
        return self._publisher

    async def _ensure_topic(self, path: str) -> None:
        if path in self._topics:
            return
        from google.api_core import exceptions

        publisher = self._ensure_publisher()
        try:
            await asyncio.to_thread(
                publisher.create_topic, name=path, timeout=_ADMIN_TIMEOUT_S, retry=None
            )
        except exceptions.AlreadyExists:
            pass
        except exceptions.GoogleAPICallError as exc:
            raise TransientSinkError(f"pubsub: cannot create topic {path}: {exc}") from exc
        self._topics.add(path)

    async def publish(self, batch: Sequence[Record]) -> None:
        publisher = self._ensure_publisher()
        pending = [r for r in batch if self._confirmed.get(id(r)) is not r]
        paths = {record.topic: self.topic_path(record.topic) for record in pending}
        for path in set(paths.values()):
            await self._ensure_topic(path)
        retry = _retry(self.publish_timeout_s)
        transmit_decoded = self.context.transmit_decoded

        def submit_all() -> list[Any]:
            # publish() only queues into the client's batcher; doing it off the loop
            # keeps a thousand small calls from stalling other sessions.
            return [
                publisher.publish(
                    paths[record.topic],
                    wire_payload(record, transmit_decoded),
                    retry=retry,
                    timeout=self.publish_timeout_s,
                    **record_metadata(record),
                )
                for record in pending
            ]

        try:
            futures = [asyncio.wrap_future(f) for f in await asyncio.to_thread(submit_all)]
        except Exception as exc:
            raise TransientSinkError(f"pubsub: publish failed: {exc}") from exc
        gathered = asyncio.gather(*futures, return_exceptions=True)
        try:
            results = await asyncio.wait_for(gathered, self.publish_timeout_s + 2.0)
        except TimeoutError:
            raise TransientSinkError(
                f"pubsub: no publish result within {self.publish_timeout_s:g}s"
            ) from None
        self._settle(pending, results)

    def _settle(self, pending: list[Record], results: list[Any]) -> None:
        from google.api_core import exceptions

        errors: list[BaseException] = []
        for record, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(result)
                if isinstance(result, exceptions.NotFound):
                    # The topic vanished (emulator restarted, deleted by hand): recreate.
                    self._topics.discard(self.topic_path(record.topic))
            else:
                self._confirmed[id(record)] = record
        if not errors:
            self._confirmed.clear()
            return
        first = errors[0]
        if all(isinstance(e, exceptions.InvalidArgument) for e in errors):
            self._confirmed.clear()
            raise PermanentSinkError(f"pubsub: {len(errors)} messages refused: {first}")
        raise TransientSinkError(f"pubsub: {len(errors)} of {len(pending)} failed: {first}")

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(publisher.stop), _CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            publisher.transport.close()


def _retry(timeout_s: float) -> Any:
    from google.api_core import exceptions, retry

    return retry.Retry(
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=timeout_s,
        predicate=retry.if_exception_type(
            exceptions.Aborted,
            exceptions.DeadlineExceeded,
            exceptions.InternalServerError,
            exceptions.ResourceExhausted,
            exceptions.ServiceUnavailable,
            exceptions.Unknown,
        ),
    )
