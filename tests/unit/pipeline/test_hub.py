"""The live hub: filters, the device index, bounded buffers, drop counts and eviction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.pipeline.hub import LiveHub, StreamFilter, Subscription, select_signals
from fleetgate.records import Record, record_json

DEVICES = ("A", "B", "C")
TOPICS = ("position", "event")


def taken(subscription: Subscription, limit: int = 10_000) -> tuple[list[Record], int]:
    batches, dropped = subscription.take(limit)
    return [record for batch in batches for record in batch.records], dropped


def rec(
    device: str = "A", topic: str = "position", source: str = "teltonika", **data: object
) -> Record:
    return Record(source, device, topic, 1, 2, data or {"speed": 1})


async def test_device_filters_use_the_index_and_can_change() -> None:
    hub = LiveHub()
    a = hub.subscribe(StreamFilter(device_ids=frozenset({"A"})))
    everyone = hub.subscribe(StreamFilter())
    hub.publish([rec("A"), rec("B")])
    hub.publish([rec("B", speed=2)])
    assert [r.device_id for r in taken(a)[0]] == ["A"]
    assert [r.device_id for r in taken(everyone)[0]] == ["A", "B", "B"]
    a.set_filter(StreamFilter(device_ids=frozenset({"B"}), topics=frozenset({"event"})))
    hub.publish([rec("A", "event"), rec("B", "position"), rec("B", "event")])
    assert [(r.device_id, r.topic) for r in taken(a)[0]] == [("B", "event")]
    a.close()
    everyone.close()
    assert hub.clients == 0
    hub.publish([rec("A")])  # nobody left: nothing to do, nothing kept


async def test_a_full_buffer_drops_and_counts_then_takes_in_order() -> None:
    hub = LiveHub()
    sub = hub.subscribe(StreamFilter(), buffer_records=4)
    hub.publish([rec(speed=n) for n in range(3)])
    hub.publish([rec(speed=n) for n in range(3, 6)])
    records, dropped = taken(sub, 2)
    assert [r.data["speed"] for r in records] == [0, 1]
    assert dropped == 2
    records, dropped = taken(sub)
    assert [r.data["speed"] for r in records] == [2, 3]
    assert dropped == 0
    assert sub.dropped_total == 2


async def test_a_subscriber_dropping_past_the_stall_timeout_is_evicted() -> None:
    hub = LiveHub()
    evicted: list[bool] = []
    stalled = hub.subscribe(
        StreamFilter(), buffer_records=1, stall_timeout_s=0.0, on_evict=lambda: evicted.append(True)
    )
    other = hub.subscribe(StreamFilter())
    hub.publish([rec(speed=1), rec(speed=2)])  # first drop starts the stall clock
    hub.publish([rec(speed=3)])  # still dropping, nothing taken: evicted
    assert evicted == [True] and stalled.evicted
    assert hub.clients == 1
    # The other subscriber got every batch, including the one during which the eviction ran.
    assert [r.data["speed"] for r in taken(other)[0]] == [1, 2, 3]


def test_signal_selection() -> None:
    signals = frozenset({"speed", "rpm"})
    assert select_signals({"speed": 3, "altitude": 4}, signals) == {"speed": 3}
    assert select_signals({"altitude": 4}, signals) is None
    can = {"signal": "rpm", "value": 3500, "unit": "rpm"}
    assert select_signals(can, signals) == can
    assert select_signals({"signal": "load", "value": 1}, signals) is None
    narrowed = StreamFilter(signals=frozenset({"speed"})).record_json_dict(rec(speed=3, altitude=4))
    assert narrowed["data"] == {"speed": 3}


filters = st.builds(
    StreamFilter,
    device_ids=st.frozensets(st.sampled_from(DEVICES), max_size=2),
    topics=st.frozensets(st.sampled_from(TOPICS), max_size=1),
)
batches = st.lists(
    st.lists(st.tuples(st.sampled_from(DEVICES), st.sampled_from(TOPICS)), min_size=1, max_size=5),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(subscriber_filters=st.lists(filters, min_size=1, max_size=5), published=batches)
def test_every_subscriber_gets_exactly_its_matches_in_order(
    subscriber_filters: list[StreamFilter], published: list[list[tuple[str, str]]]
) -> None:
    hub = LiveHub()
    subscriptions = [hub.subscribe(f, buffer_records=1000) for f in subscriber_filters]
    sent: list[Record] = []
    for batch in published:
        records = [rec(device, topic, n=len(sent) + i) for i, (device, topic) in enumerate(batch)]
        sent += records
        hub.publish(records)
    for stream_filter, subscription in zip(subscriber_filters, subscriptions, strict=True):
        got, dropped = taken(subscription)
        assert dropped == 0
        assert got == [r for r in sent if stream_filter.matches(r)]


async def test_a_batch_is_serialised_once_for_every_subscriber() -> None:
    hub = LiveHub()
    subscribers = [hub.subscribe(StreamFilter()) for _ in range(3)]
    hub.publish([rec(speed=1), rec(speed=2)])
    batches = [subscriber.take(10)[0][0] for subscriber in subscribers]
    assert batches[0] is batches[1] is batches[2]
    assert batches[0].joined_json() == record_json(rec(speed=1)) + b"," + record_json(rec(speed=2))
