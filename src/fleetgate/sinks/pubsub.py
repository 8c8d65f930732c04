"""``pubsub``: publish records to Google Cloud Pub/Sub.

Library: google-cloud-pubsub, Google's own client. Its ``PublisherClient`` honours
``PUBSUB_EMULATOR_HOST`` (plain gRPC to an emulator, no credentials) and otherwise
Application Default Credentials, exactly like the reference's Go client. fleetgate calls
its generated ``Publish`` RPC directly (``PublisherClient.api``) with up to 1000 messages
per request instead of going through the client's background batcher: the runner already
batches, one RPC confirms a whole chunk at once, and the batcher's concurrent commits
could reorder a vehicle's messages. The blocking RPC runs in a worker thread.

Names (spec section 11): topic ``<namespace>_<topic>`` in ``pubsub.gcp_project_id``, created
on first use if missing (the reference creates them at start-up for every routed type;
the sink does not know the routed types up front, and creating lazily also heals an
emulator that lost its state). Attributes = the seven metadata keys; data =
:func:`~fleetgate.forms.wire_payload`.

Confirmation: the Publish RPC returned a message id for every message. An RPC that
cannot finish within ``publish_timeout_s`` (retries of UNAVAILABLE and friends included)
raises :class:`TransientSinkError`; chunks already confirmed are skipped when the runner
retries the batch. Setting both ``PUBSUB_EMULATOR_HOST`` and
``GOOGLE_APPLICATION_CREDENTIALS``, or leaving the project id empty, is a configuration
error at start-up, as in the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from fleetgate.forms import wire_payload
from fleetgate.records import Record
from fleetgate.settings import ConfigError, Section
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

MAX_MESSAGES_PER_CALL = 1000
# The service's request limit is 10 MB; stay clear of it including attributes.
MAX_BYTES_PER_CALL = 8 * 1024 * 1024
_DEFAULT_PUBLISH_TIMEOUT_S = 10.0
_ADMIN_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 5.0


class PubSubSettings(Section):
    """The ``pubsub`` section."""

    gcp_project_id: str = ""
    publish_timeout_ms: int = Field(0, ge=0)  # fleetgate addition; 0: the default
    reliable_ack: bool | None = None  # documented by the reference, never read


class PubSubSink(Sink):
    name: ClassVar[str] = "pubsub"
    Settings: ClassVar[type[Section]] = PubSubSettings
    label: ClassVar[str | None] = "Pubsub"
    settings: PubSubSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        self.project = self.settings.gcp_project_id
        if not self.project:
            raise ConfigError("pubsub.gcp_project_id: must be set to publish to Pub/Sub")
        if os.environ.get("PUBSUB_EMULATOR_HOST") and os.environ.get(
            "GOOGLE_APPLICATION_CREDENTIALS"
        ):
            raise ConfigError(
                "pubsub: PUBSUB_EMULATOR_HOST and GOOGLE_APPLICATION_CREDENTIALS are both set; "
                "choose the emulator or real Google Cloud"
            )
        timeout_ms = self.settings.publish_timeout_ms
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

            self._publisher = pubsub_v1.PublisherClient()
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
        pending = [r for r in batch if self._confirmed.get(id(r)) is not r]
        by_topic: dict[str, list[Record]] = {}
        for record in pending:
            by_topic.setdefault(record.topic, []).append(record)
        for topic, records in by_topic.items():
            path = self.topic_path(topic)
            await self._ensure_topic(path)
            for chunk in _chunks(records, self.context.transmit_decoded):
                await self._publish_chunk(path, chunk)
                for record in chunk:
                    self._confirmed[id(record)] = record
        self._confirmed.clear()

    async def _publish_chunk(self, path: str, chunk: list[Record]) -> None:
        from google.api_core import exceptions
        from google.pubsub_v1 import PubsubMessage

        transmit_decoded = self.context.transmit_decoded
        messages = [
            PubsubMessage(
                data=wire_payload(record, transmit_decoded), attributes=self.headers(record)
            )
            for record in chunk
        ]
        api = self._ensure_publisher().api
        call = asyncio.to_thread(
            api.publish,
            topic=path,
            messages=messages,
            retry=_retry(self.publish_timeout_s),
            timeout=self.publish_timeout_s,
        )
        try:
            response = await asyncio.wait_for(call, self.publish_timeout_s + 2.0)
        except TimeoutError:
            raise TransientSinkError(
                f"pubsub {path}: no publish result within {self.publish_timeout_s:g}s"
            ) from None
        except exceptions.NotFound as exc:
            # The topic vanished (emulator restarted, deleted by hand): recreate next time.
            self._topics.discard(path)
            raise TransientSinkError(f"pubsub {path}: {exc}") from exc
        except exceptions.InvalidArgument as exc:
            self._confirmed.clear()
            raise PermanentSinkError(f"pubsub {path}: messages refused: {exc}") from exc
        except exceptions.GoogleAPICallError as exc:
            raise TransientSinkError(f"pubsub {path}: {exc}") from exc
        except exceptions.RetryError as exc:
            raise TransientSinkError(f"pubsub {path}: {exc}") from exc
        if len(response.message_ids) != len(messages):
            raise TransientSinkError(
                f"pubsub {path}: {len(response.message_ids)} ids for {len(messages)} messages"
            )

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


def _chunks(records: list[Record], transmit_decoded: bool) -> list[list[Record]]:
    """Split into Publish requests within the message-count and size limits."""
    chunks: list[list[Record]] = []
    current: list[Record] = []
    size = 0
    for record in records:
        # Payload plus a generous allowance for the seven attributes.
        entry = len(wire_payload(record, transmit_decoded)) + 256
        if current and (len(current) >= MAX_MESSAGES_PER_CALL or size + entry > MAX_BYTES_PER_CALL):
            chunks.append(current)
            current, size = [], 0
        current.append(record)
        size += entry
    if current:
        chunks.append(current)
    return chunks
