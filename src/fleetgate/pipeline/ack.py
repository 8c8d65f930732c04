"""When is it safe to acknowledge a device? The one place that decides.

Protocol sessions never decide this themselves; they hand the pipeline a frame and ack
only if it says the frame is safe. The policy names, per source and topic, the consumers
whose watermark an ack waits for:

* ``receive``: nothing; ack as soon as the records are decoded and queued (fastest; a
  crash loses what the sinks had not confirmed yet).
* ``spool`` (default): the durable spool wrote and synced them; every sink is fed from it
  at least once, across restarts.
* ``store``: the embedded store committed them.
* ``sinks``: the named sinks confirmed them (``ack_policy: {"teltonika": ["kafka"]}``).
* Tesla's ``reliable_ack_sources``: that sink confirmed a record of its topic, on top of
  the source's level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetgate.config import AckLevel

SPOOL_CONSUMER = "spool"


class AckPolicy:
    """Which consumers an ack for a record of (source, topic) waits for."""

    def __init__(
        self,
        level: AckLevel,
        store_sink: str | None,
        reliable_sinks: Mapping[str, str] | None = None,
        per_source: Mapping[str, AckLevel | Sequence[str]] | None = None,
    ) -> None:
        self.level = level
        self._store_sink = store_sink
        self._default = self._base(level)
        self._per_source = {
            source: tuple(rule) if not isinstance(rule, str) else self._base(AckLevel(rule))
            for source, rule in (per_source or {}).items()
        }
        self._reliable = dict(reliable_sinks or {})
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def _base(self, level: AckLevel) -> tuple[str, ...]:
        if level is AckLevel.SPOOL:
            return (SPOOL_CONSUMER,)
        if level is AckLevel.STORE and self._store_sink:
            return (self._store_sink,)
        return ()

    def required_sinks(self, topic: str, source: str = "") -> tuple[str, ...]:
        """Consumers that must confirm a record of ``source``/``topic`` before its ack."""
        key = (source, topic)
        cached = self._cache.get(key)
        if cached is None:
            base = self._per_source.get(source, self._default)
            reliable = self._reliable.get(topic)
            cached = base + ((reliable,) if reliable and reliable not in base else ())
            self._cache[key] = cached
        return cached
