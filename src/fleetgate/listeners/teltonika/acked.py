"""The two counters every acked Teltonika frame adds to, counted per frame at its ack."""

from __future__ import annotations

from collections.abc import Callable

from fleetgate.observability import metrics

_Add = Callable[[float], None]


class AckedCounter:
    """Counts an acked frame: ``TELTONIKA_FRAMES{codec, accepted}`` and
    ``ACKS{protocol, acked}`` by one each.

    The frame's ack is written first, then counted, per frame (so /metrics is exact at
    any scrape after the ack). Each count is the two counters' adders
    (:func:`metrics.adder`), found once per codec: a dict look-up per frame instead of two
    ``labels`` look-ups (a key tuple each) and two ``Counter.inc`` calls with their checks.
    """

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self._adders: dict[str, tuple[_Add, _Add]] = {}

    def __call__(self, codec: str) -> None:
        adders = self._adders.get(codec)
        if adders is None:  # codec labels are few (8, 8E, 16, ...): no bound needed
            adders = self._adders[codec] = (
                metrics.labelled_adder(metrics.TELTONIKA_FRAMES, codec, "accepted"),
                metrics.labelled_adder(metrics.ACKS, self.protocol, "acked"),
            )
        add_frame, add_ack = adders
        add_frame(1)
        add_ack(1)
