"""Maps record topics to sink names, as Tesla's ``records`` config does.

``records`` is ``{topic: [sink, ...]}``. The key ``"*"`` matches every topic, so one line
sends all Teltonika positions and events somewhere. The embedded store is not listed here:
the pipeline always feeds it, because it backs the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

WILDCARD = "*"


class Router:
    """Answers "which sinks get a record of this topic?" with a per-topic cache."""

    def __init__(self, records: Mapping[str, Sequence[str]], always: Sequence[str] = ()) -> None:
        self._rules = {topic: tuple(sinks) for topic, sinks in records.items()}
        self._always = tuple(always)
        self._cache: dict[str, tuple[str, ...]] = {}

    @property
    def sink_names(self) -> set[str]:
        """Every sink some rule (or the always-list) names."""
        names = set(self._always)
        for sinks in self._rules.values():
            names.update(sinks)
        return names

    @property
    def topics(self) -> set[str]:
        """Topics with an explicit rule (Tesla's sender check depends on this)."""
        return {topic for topic in self._rules if topic != WILDCARD}

    def targets(self, topic: str) -> tuple[str, ...]:
        """Sink names for ``topic``: always-sinks, the topic's own, then the wildcard's."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        names: list[str] = list(self._always)
        for sink in (*self._rules.get(topic, ()), *self._rules.get(WILDCARD, ())):
            if sink not in names:
                names.append(sink)
        result = tuple(names)
        self._cache[topic] = result
        return result
