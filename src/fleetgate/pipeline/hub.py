"""The live hub: every record entering the pipeline, fanned out to live subscribers.

The app registers :meth:`LiveHub.publish` with ``Pipeline.add_observer``, so it is called
synchronously with every batch. For each subscriber whose filter matches, the batch goes
into that subscriber's bounded buffer and its consumer (a ``/stream`` connection) is woken.
``publish`` never waits and never does I/O, so a slow consumer cannot slow ingestion or
the other subscribers: once its buffer is full, new records for it are dropped and counted
(its consumer tells the client how many), and a subscriber that keeps dropping for
``stall_timeout_s`` without taking anything is evicted (its consumer disconnects it).

Subscribers filtering by device id are indexed by device, so a hundred dashboards each
watching one vehicle cost one dictionary lookup per batch, not a hundred filter checks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetgate.observability import metrics
from fleetgate.records import Record, record_dict, record_jsons


def select_signals(data: Mapping[str, Any], signals: frozenset[str]) -> dict[str, Any] | None:
    """``data`` narrowed to ``signals``, or ``None`` when it holds none of them.

    A record holding one named signal (a CAN gateway's ``{"signal": "rpm", "value": ...}``)
    is kept whole when its signal is named; other records keep the named keys of ``data``.
    """
    name = data.get("signal")
    if isinstance(name, str) and "value" in data:
        return dict(data) if name in signals else None
    selected = {key: data[key] for key in signals if key in data}
    return selected or None


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which records a subscriber wants: each non-empty set must contain the record's value.

    ``signals`` matches records holding any of the named signals, and narrows their data to
    those signals (see :func:`select_signals`).
    """

    device_ids: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    signals: frozenset[str] = frozenset()

    @property
    def beyond_device(self) -> bool:
        """True when records must be checked one by one (more than a device filter)."""
        return bool(self.sources or self.topics or self.signals)

    def matches(self, record: Record) -> bool:
        if self.device_ids and record.device_id not in self.device_ids:
            return False
        if self.sources and record.source not in self.sources:
            return False
        if self.topics and record.topic not in self.topics:
            return False
        return not self.signals or select_signals(record.data, self.signals) is not None

    def record_json_dict(self, record: Record) -> dict[str, Any]:
        """The record's JSON form, its data narrowed to ``signals`` when there are any."""
        form = record_dict(record)
        if self.signals:
            form["data"] = select_signals(record.data, self.signals) or {}
        return form

    def as_json(self) -> dict[str, list[str]]:
        return {
            "device_id": sorted(self.device_ids),
            "source": sorted(self.sources),
            "topic": sorted(self.topics),
            "signal": sorted(self.signals),
        }


class Batch:
    """Records offered together. Their JSON forms, joined once (``a,b,c``), are shared by
    every subscriber the batch went to whole: a hundred clients cost one serialisation."""

    __slots__ = ("_joined", "records")

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = records
        self._joined: bytes | None = None

    def __len__(self) -> int:
        return len(self.records)

    def joined_json(self) -> bytes:
        joined = self._joined
        if joined is None:
            joined = self._joined = b",".join(record_jsons(self.records))
        return joined

    def split(self, count: int) -> tuple[Batch, Batch]:
        return Batch(self.records[:count]), Batch(self.records[count:])


class Subscription:
    """One subscriber's bounded buffer, drop count and wake-up event.

    The hub calls :meth:`offer`; the consumer awaits :meth:`wait` and calls :meth:`take`.
    """

    def __init__(
        self,
        hub: LiveHub,
        stream_filter: StreamFilter,
        buffer_records: int,
        stall_timeout_s: float,
        on_evict: Callable[[], None] | None,
    ) -> None:
        self.hub = hub
        self.filter = stream_filter
        self.buffer_records = buffer_records
        self.stall_timeout_s = stall_timeout_s
        self.on_evict = on_evict
        self.evicted = False
        # Records dropped since the consumer last took (what the next notice reports).
        self.dropped = 0
        self.dropped_total = 0
        self._batches: deque[Batch] = deque()
        self._buffered = 0
        self._dropping_since: float | None = None
        self._wakeup = asyncio.Event()

    @property
    def buffered(self) -> int:
        return self._buffered

    def offer(self, batch: Batch) -> None:
        """Buffer ``batch`` (already matched) or drop what does not fit; never blocks."""
        room = self.buffer_records - self._buffered
        if room >= len(batch):
            self._batches.append(batch)
            self._buffered += len(batch)
        else:
            if room > 0:
                self._batches.append(batch.split(room)[0])
                self._buffered += room
            self._drop(len(batch) - max(room, 0))
        self._wakeup.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.dropped_total += count
        metrics.STREAM_DROPPED.inc(count)
        now = time.monotonic()
        if self._dropping_since is None:
            self._dropping_since = now
        elif now - self._dropping_since >= self.stall_timeout_s:
            self.hub.evict(self)

    async def wait(self) -> None:
        """Until there is something to take (records, a drop notice) or the hub evicted us."""
        await self._wakeup.wait()
        self._wakeup.clear()

    def take(self, limit: int) -> tuple[list[Batch], int]:
        """Up to ``limit`` buffered records (in batches, oldest first) and the drops since
        the last take."""
        taken: list[Batch] = []
        count = 0
        while self._batches and count < limit:
            batch = self._batches.popleft()
            room = limit - count
            if len(batch) > room:
                batch, rest = batch.split(room)
                self._batches.appendleft(rest)
            taken.append(batch)
            count += len(batch)
        self._buffered -= count
        if self._batches:
            self._wakeup.set()
        dropped, self.dropped = self.dropped, 0
        # Taking is progress: the stall clock starts again at the next drop.
        self._dropping_since = None
        return taken, dropped

    def set_filter(self, stream_filter: StreamFilter) -> None:
        self.hub.refilter(self, stream_filter)

    def close(self) -> None:
        self.hub.unsubscribe(self)


class LiveHub:
    """Fan-out of pipeline batches to :class:`Subscription` buffers."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        # Tuples, replaced on change (never mutated): publish iterates them while an offer
        # may evict a subscriber.
        self._by_device: dict[str, tuple[Subscription, ...]] = {}
        # Subscribers without a device filter: every batch is offered to them.
        self._unindexed: tuple[Subscription, ...] = ()

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    def subscribe(
        self,
        stream_filter: StreamFilter,
        buffer_records: int = 10_000,
        stall_timeout_s: float = 10.0,
        on_evict: Callable[[], None] | None = None,
    ) -> Subscription:
        subscription = Subscription(self, stream_filter, buffer_records, stall_timeout_s, on_evict)
        self._subscriptions.add(subscription)
        self._index(subscription)
        metrics.STREAM_CLIENTS.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription not in self._subscriptions:
            return
        self._subscriptions.discard(subscription)
        self._unindex(subscription)
        metrics.STREAM_CLIENTS.dec()

    def refilter(self, subscription: Subscription, stream_filter: StreamFilter) -> None:
        if subscription in self._subscriptions:
            self._unindex(subscription)
            subscription.filter = stream_filter
            self._index(subscription)
        else:
            subscription.filter = stream_filter

    def evict(self, subscription: Subscription) -> None:
        """Stop feeding a subscriber that has stalled; its consumer disconnects it."""
        if subscription.evicted:
            return
        subscription.evicted = True
        self.unsubscribe(subscription)
        metrics.STREAM_EVICTED.inc()
        subscription._wakeup.set()
        if subscription.on_evict is not None:
            subscription.on_evict()

    def publish(self, records: Sequence[Record]) -> None:
        """Offer ``records`` to every matching subscriber (the pipeline observer)."""
        if not records or not self._subscriptions:
            return
        batch = Batch(records)
        for subscription in self._unindexed:
            _offer(subscription, batch)
        if not self._by_device:
            return
        device_id = records[0].device_id
        if all(record.device_id == device_id for record in records):
            for subscription in self._by_device.get(device_id, ()):
                _offer(subscription, batch)
            return
        # Several devices in one batch (rare: a frame is one device's): each subscriber gets
        # its matches once, in the batch's order.
        targets: dict[Subscription, None] = {}
        for device in {record.device_id for record in records}:
            targets.update(dict.fromkeys(self._by_device.get(device, ())))
        for subscription in targets:
            matches = subscription.filter.matches
            matched = [record for record in records if matches(record)]
            if matched:
                subscription.offer(Batch(matched))

    def _index(self, subscription: Subscription) -> None:
        device_ids = subscription.filter.device_ids
        if not device_ids:
            self._unindexed = (*self._unindexed, subscription)
            return
        for device_id in device_ids:
            self._by_device[device_id] = (*self._by_device.get(device_id, ()), subscription)

    def _unindex(self, subscription: Subscription) -> None:
        device_ids = subscription.filter.device_ids
        if not device_ids:
            self._unindexed = _without(self._unindexed, subscription)
            return
        for device_id in device_ids:
            remaining = _without(self._by_device.get(device_id, ()), subscription)
            if remaining:
                self._by_device[device_id] = remaining
            else:
                self._by_device.pop(device_id, None)


def _offer(subscription: Subscription, batch: Batch) -> None:
    if subscription.filter.beyond_device:
        matches = subscription.filter.matches
        matched = [record for record in batch.records if matches(record)]
        if not matched:
            return
        batch = Batch(matched)
    subscription.offer(batch)


def _without(items: tuple[Subscription, ...], item: Subscription) -> tuple[Subscription, ...]:
    return tuple(candidate for candidate in items if candidate is not item)


def parse_filter_values(values: Iterable[str]) -> frozenset[str]:
    """Repeated and comma-separated values (``a,b`` and ``a&b``) as one set."""
    return frozenset(part.strip() for value in values for part in value.split(",") if part.strip())
