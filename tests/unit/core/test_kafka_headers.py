"""The Kafka sink's header pairs are exactly ``Sink.headers`` (same keys, values, order)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.records import Record, set_offset
from fleetgate.sinks.base import SinkContext
from fleetgate.sinks.kafka import KafkaSink, kafka_headers

text = st.text(max_size=12)
metas = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["txid", "device_client_version", "socket_id"]), text),
)


@given(
    device=text,
    topic=text,
    received=st.integers(-(2**63), 2**63),
    meta=metas,
    offset=st.integers(0, 2**40),
    node=text,
)
def test_header_pairs_equal_the_sinks_headers(
    device: str, topic: str, received: int, meta: dict[str, str] | None, offset: int, node: str
) -> None:
    record = Record("tesla", device, topic, 0, received, {}, meta=meta)
    set_offset(record, offset)
    sink = KafkaSink({"bootstrap.servers": "x:1"}, SinkContext(node_id=node))
    assert sink._fast_headers
    expected = list(sink.headers(record).items())
    assert kafka_headers(record, sink._record_id_prefix) == expected
    assert sink._kafka_headers(record) == expected


def test_a_subclass_with_its_own_headers_keeps_them() -> None:
    class Custom(KafkaSink):
        def headers(self, record: Record) -> dict[str, str]:
            return {"only": record.device_id}

    sink = Custom({"bootstrap.servers": "x:1"}, SinkContext())
    assert sink._kafka_headers(Record("t", "d", "p", 0, 0, {})) == {"only": "d"}
