"""Output forms: how a record looks to each kind of sink, per source.

Every record has one JSON form (:func:`fleetgate.records.record_json`). Some sinks need more:

* the **wire payload** a dispatcher sends (:func:`wire_payload`): a protocol may forward its
  own bytes (Tesla: the vehicle's transformed protobuf, or its protojson when
  ``transmit_decoded_records`` is set); every other source sends the record JSON;
* the **log data** of the logger sink's ``record_payload`` line (:func:`log_data`; Tesla: the
  reference logger's map);
* the **MQTT messages** of one record (:func:`mqtt_messages`; Tesla: one message per field,
  as the reference MQTT dispatcher publishes; ``None`` means the sink's default form).

The built-in forms are listed here, by source; ``register_*`` add forms for plug-in sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fleetgate.records import SOURCE_TESLA, Record, record_dict, record_json, record_jsons

# (record, transmit_decoded) -> bytes
WireForm = Callable[[Record, bool], bytes]
# (record, verbose) -> data of the log line
LogForm = Callable[[Record, bool], Any]
# (record, topic_base) -> [(mqtt topic, payload bytes), ...]
MqttForm = Callable[[Record, str], list[tuple[str, bytes]]]


# The Tesla forms need protobuf and the Tesla descriptors: they are imported with the first
# Tesla record (a server without vehicles never loads them), then called directly.
def _tesla_wire_form(record: Record, transmit_decoded: bool) -> bytes:
    from fleetgate.protocols.tesla.protojson import protojson_bytes

    def tesla_wire_form(record: Record, transmit_decoded: bool) -> bytes:
        """Tesla dispatchers forward the transformed protobuf, or its protojson."""
        return protojson_bytes(record) if transmit_decoded else record.raw

    _wire_forms[SOURCE_TESLA] = tesla_wire_form
    return tesla_wire_form(record, transmit_decoded)


def _tesla_log_form(record: Record, verbose: bool) -> Any:
    from fleetgate.forms.tesla_log import log_form

    _log_forms[SOURCE_TESLA] = log_form
    return log_form(record, verbose)


def _tesla_mqtt_form(record: Record, topic_base: str) -> list[tuple[str, bytes]]:
    return _load_tesla_mqtt_form()(record, topic_base)


def _load_tesla_mqtt_form() -> MqttForm:
    from fleetgate.forms.tesla_mqtt import mqtt_messages

    _mqtt_forms[SOURCE_TESLA] = mqtt_messages
    return mqtt_messages


_wire_forms: dict[str, WireForm] = {SOURCE_TESLA: _tesla_wire_form}
_log_forms: dict[str, LogForm] = {SOURCE_TESLA: _tesla_log_form}
_mqtt_forms: dict[str, MqttForm] = {SOURCE_TESLA: _tesla_mqtt_form}


def register_wire_form(source: str, form: WireForm) -> None:
    """Let a plug-in source say how its records travel to dispatchers."""
    _wire_forms[source] = form


def register_log_form(source: str, form: LogForm) -> None:
    """Let a plug-in source choose how its records look in the log."""
    _log_forms[source] = form


def register_mqtt_form(source: str, form: MqttForm) -> None:
    """Make the MQTT sink publish ``source``'s records as ``form`` says."""
    _mqtt_forms[source] = form


def wire_payload(record: Record, transmit_decoded: bool = False) -> bytes:
    """Bytes a dispatcher sends for ``record`` (the record JSON unless its source has a form)."""
    form = _wire_forms.get(record.source)
    if form is None:
        return record_json(record)
    return form(record, transmit_decoded)


def wire_payloads(records: Sequence[Record], transmit_decoded: bool = False) -> list[bytes]:
    """:func:`wire_payload` of each of ``records`` (a sink's batch), the same bytes.

    A batch whose sources all send the record JSON is serialised by
    :func:`~fleetgate.records.record_jsons` in one loop (the sources are compared by
    identity: a frame's records share one string).
    """
    forms = _wire_forms
    source = None
    for record in records:
        if record.source is not source:
            source = record.source
            if source in forms:
                return [wire_payload(record, transmit_decoded) for record in records]
    return record_jsons(records)


def log_data(record: Record, verbose: bool) -> Any:
    """``data`` of the logger sink's line for ``record``."""
    form = _log_forms.get(record.source)
    return form(record, verbose) if form is not None else record_dict(record)


def mqtt_form(source: str) -> MqttForm | None:
    """The MQTT form of ``source``, or ``None`` for the sink's default one-message form."""
    form = _mqtt_forms.get(source)
    return _load_tesla_mqtt_form() if form is _tesla_mqtt_form else form
