"""Per-source MQTT message forms, registered by protocol packages.

The MQTT sink publishes one message per record by default
(``<topic_base>/<device_id>/<topic>`` carrying the record JSON). A protocol whose reference
dispatcher splits a record into several messages (Tesla: one message per field under
``<topic_base>/<VIN>/v/<Field>``) registers a form here instead. This module imports
nothing heavy so protocol packages can register without pulling in an MQTT client.
"""

from __future__ import annotations

from collections.abc import Callable

from fleetgate.records import Record

# (record, topic_base) -> [(mqtt topic, payload bytes), ...]
MqttForm = Callable[[Record, str], list[tuple[str, bytes]]]
_mqtt_forms: dict[str, MqttForm] = {}


def register_mqtt_form(source: str, fn: MqttForm) -> None:
    """Make the MQTT sink publish ``source``'s records as ``fn`` says."""
    _mqtt_forms[source] = fn


def mqtt_form(source: str) -> MqttForm | None:
    """The MQTT form registered for ``source``, or ``None`` for the default form."""
    return _mqtt_forms.get(source)
