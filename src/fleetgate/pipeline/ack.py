"""When is it safe to acknowledge a device? The one place that decides.

Protocol sessions never decide this themselves; they call :meth:`Pipeline.accept` and ack
only if it returns true. The policy names, per topic, the sinks whose confirmation the ack
must wait for:

* ``receipt``: nothing; ack as soon as the records are queued (fast, can lose data).
* ``store`` (default): the embedded store committed them.
* reliable-ack sinks (Tesla's ``reliable_ack_sources``): that sink confirmed, on top of
  the level above.
* ``spool`` (later): the durable local spool committed them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fleetgate.config import AckLevel


class AckPolicy:
    """Per-topic list of sinks whose confirmation an ack waits for."""

    def __init__(
        self,
        level: AckLevel,
        store_sink: str | None,
        reliable_sinks: Mapping[str, str] | None = None,
    ) -> None:
        self.level = level
        self._base: tuple[str, ...] = (
            (store_sink,) if level is AckLevel.STORE and store_sink else ()
        )
        self._reliable = dict(reliable_sinks or {})
        self._cache: dict[str, tuple[str, ...]] = {}

    def required_sinks(self, topic: str) -> tuple[str, ...]:
        """Sinks that must confirm a record of ``topic`` before it is acknowledged."""
        cached = self._cache.get(topic)
        if cached is None:
            reliable = self._reliable.get(topic)
            cached = self._base + ((reliable,) if reliable and reliable not in self._base else ())
            self._cache[topic] = cached
        return cached

    def required_for(self, topics: Iterable[str]) -> set[str]:
        """Union of :meth:`required_sinks` over several topics."""
        required: set[str] = set()
        for topic in topics:
            required.update(self.required_sinks(topic))
        return required
