"""``kinesis``: put records into AWS Kinesis Data Streams.

Library: aiobotocore, botocore on asyncio. It uses botocore's standard credential chain,
region lookup and endpoint rules, exactly what Tesla's reference gets from the AWS SDK
(environment variables, shared config files, instance roles), without a thread per
request. ``PutRecords`` sends up to 500 records per call instead of the reference's one
``PutRecord`` per record.

Names (spec section 11): stream = ``kinesis.streams[topic]``, overridden by the environment
variable ``KINESIS_STREAM_<TOPIC>``, else ``<namespace>_<topic>``; PartitionKey = device id
(one shard per vehicle, so per-vehicle order); Data =
:func:`~fleetgate.forms.wire_payload`. The endpoint comes from ``kinesis.override_host``
or ``AWS_ENDPOINT_URL_KINESIS``; the region from ``kinesis.region``, the AWS environment,
else ``us-east-1``.

Confirmation: ``PutRecords`` returned and every entry has a sequence number. Entries the
service refused (throttling, internal failure) are put again a few times within the same
``publish``; whatever still fails makes it raise :class:`TransientSinkError`, and records
already confirmed are skipped when the runner retries that batch.
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
from fleetgate.settings import Section
from fleetgate.sinks.base import PermanentSinkError, Sink, SinkContext, TransientSinkError

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
# Attempts for entries PutRecords refused, inside one publish.
_ENTRY_ATTEMPTS = 4
_CONNECT_TIMEOUT_S = 3.0
_READ_TIMEOUT_S = 10.0


class KinesisSettings(Section):
    """The ``kinesis`` section (reference keys, plus ``region``)."""

    max_retries: int = Field(1, ge=0)
    override_host: str = ""
    streams: dict[str, str] = Field(default_factory=dict)
    region: str | None = None


class KinesisSink(Sink):
    name: ClassVar[str] = "kinesis"
    Settings: ClassVar[type[Section]] = KinesisSettings
    label: ClassVar[str | None] = "Kinesis"
    settings: KinesisSettings

    def __init__(self, settings: Section | Mapping[str, Any], context: SinkContext) -> None:
        super().__init__(settings, context)
        config = self.settings
        self.streams: dict[str, str] = dict(config.streams)
        self.endpoint = config.override_host or os.environ.get("AWS_ENDPOINT_URL_KINESIS", "")
        self.region = (
            config.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.max_retries = config.max_retries
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        # Records of a failed batch the service already took: skipped on the retry.
        self._confirmed: dict[int, Record] = {}

    def describe(self) -> str:
        where = self.endpoint or f"region {self.region}"
        return f"kinesis {where}"

    def stream_for(self, topic: str) -> str:
        """Tesla's rule: env ``KINESIS_STREAM_<TOPIC>`` > ``streams[topic]`` > namespace."""
        override = os.environ.get(f"KINESIS_STREAM_{topic.upper()}")
        if override:
            return override
        return self.streams.get(topic) or self.destination(topic)

    async def start(self) -> None:
        client = await self._connect()
        try:
            # The reference's start-up check: the service answers and credentials work.
            await client.list_streams(Limit=1)
        except Exception as exc:
            raise TransientSinkError(f"kinesis: ListStreams failed: {exc}") from exc

    async def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=_READ_TIMEOUT_S,
            # botocore counts the first call as an attempt; max_retries counts retries.
            retries={"max_attempts": self.max_retries + 1, "mode": "standard"},
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "kinesis",
                region_name=self.region,
                endpoint_url=self.endpoint or None,
                config=config,
            )
        )
        self._stack, self._client = stack, client
        return client

    async def _disconnect(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def publish(self, batch: Sequence[Record]) -> None:
        client = await self._connect()
        by_stream: dict[str, list[Record]] = {}
        for record in batch:
            if self._confirmed.get(id(record)) is record:
                continue
            by_stream.setdefault(self.stream_for(record.topic), []).append(record)
        for stream, records in by_stream.items():
            for chunk in _chunks(records, self.context.transmit_decoded):
                await self._put(client, stream, chunk)
        self._confirmed.clear()

    async def _put(self, client: Any, stream: str, chunk: list[tuple[Record, bytes]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        pending = chunk
        delay = 0.05
        for attempt in range(_ENTRY_ATTEMPTS):
            entries = [
                {"Data": data, "PartitionKey": record.device_id or "-"} for record, data in pending
            ]
            try:
                response = await client.put_records(StreamName=stream, Records=entries)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("ValidationException", "InvalidArgumentException"):
                    raise PermanentSinkError(f"kinesis {stream}: {exc}") from exc
                raise TransientSinkError(f"kinesis {stream}: {exc}") from exc
            except (TimeoutError, BotoCoreError, OSError) as exc:
                # Connection refused / endpoint gone. The client's connection pool
                # reconnects on the next call (building a new client costs ~0.3 s).
                raise TransientSinkError(f"kinesis {stream}: {exc}") from exc
            failed: list[tuple[Record, bytes]] = []
            last_error = ""
            for item, result in zip(pending, response.get("Records", []), strict=False):
                if result.get("ErrorCode"):
                    failed.append(item)
                    last_error = f"{result['ErrorCode']}: {result.get('ErrorMessage', '')}"
                else:
                    self._confirmed[id(item[0])] = item[0]
            if not failed:
                return
            pending = failed
            if attempt + 1 < _ENTRY_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        raise TransientSinkError(
            f"kinesis {stream}: {len(pending)} of {len(chunk)} records refused ({last_error})"
        )

    async def close(self) -> None:
        await self._disconnect()


def _chunks(records: list[Record], transmit_decoded: bool) -> list[list[tuple[Record, bytes]]]:
    """Split into PutRecords calls: ≤500 entries and ≤5 MiB each."""
    chunks: list[list[tuple[Record, bytes]]] = []
    current: list[tuple[Record, bytes]] = []
    size = 0
    for record in records:
        data = wire_payload(record, transmit_decoded)
        entry_size = len(data) + len(record.device_id.encode())
        if entry_size > MAX_RECORD_BYTES:
            raise PermanentSinkError(
                f"kinesis: record of {record.device_id} is {entry_size} bytes (limit 1 MiB)"
            )
        if current and (
            len(current) >= MAX_RECORDS_PER_CALL or size + entry_size > MAX_BYTES_PER_CALL
        ):
            chunks.append(current)
            current, size = [], 0
        current.append((record, data))
        size += entry_size
    if current:
        chunks.append(current)
    return chunks
