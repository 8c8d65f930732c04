"""The CAN gateway topic map: ``<root>/<gateway-id>/<group>/<signal>``.

``root`` is ``vehicles`` unless configured (it may have several levels, ``fleet/eu/vehicles``).
The gateway id is one topic level of 1 to 128 characters from ``A-Z a-z 0-9 : _ . -`` (AWS
IoT's thing-name alphabet, plus the dot); ``group`` and ``signal`` must name a row of
:data:`~fleetgate.protocols.mqtt.signals.SIGNALS`. Anything else is an unknown topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from fleetgate.protocols.mqtt.signals import Signal, signal_for

DEFAULT_ROOT: Final = "vehicles"
GATEWAY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9:_.-]{1,128}")


class TopicError(ValueError):
    """A topic outside the gateway topic map. ``gateway_id`` is set when that level was
    readable, so refusals can still be counted per gateway."""

    def __init__(self, message: str, gateway_id: str | None = None) -> None:
        super().__init__(message)
        self.gateway_id = gateway_id


@dataclass(frozen=True, slots=True)
class SignalTopic:
    """Where a message came from: which gateway, which signal."""

    gateway_id: str
    signal: Signal

    @property
    def group(self) -> str:
        return self.signal.group


def valid_gateway_id(gateway_id: str) -> bool:
    """True when ``gateway_id`` can be one level of the topic map."""
    return GATEWAY_ID_PATTERN.fullmatch(gateway_id) is not None


def signal_topic(gateway_id: str, group: str, signal: str, root: str = DEFAULT_ROOT) -> str:
    """The topic a gateway publishes ``group/signal`` on."""
    if not valid_gateway_id(gateway_id):
        raise ValueError(f"gateway id {gateway_id!r} is not a valid topic level")
    return f"{root}/{gateway_id}/{group}/{signal}"


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> SignalTopic:
    """The gateway and signal of ``topic``, or :class:`TopicError`."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic is not under {root}/")
    levels = topic[len(prefix) :].split("/")
    gateway_id = levels[0]
    if not valid_gateway_id(gateway_id):
        raise TopicError("gateway id level is empty or has characters outside A-Za-z0-9:_.-")
    if len(levels) != 3:
        raise TopicError("expected <root>/<gateway-id>/<group>/<signal>", gateway_id)
    signal = signal_for(levels[1], levels[2])
    if signal is None:
        raise TopicError(f"no signal {levels[1]}/{levels[2]}", gateway_id)
    return SignalTopic(gateway_id, signal)
