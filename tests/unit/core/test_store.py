from __future__ import annotations

from pathlib import Path

from fleetgate.records import Record
from fleetgate.store import RecordStore, shard_path


def rec(device: str, created: int, received: int, topic: str = "position") -> Record:
    return Record("teltonika", device, topic, created, received, {"n": created}, meta={"txid": "t"})


def test_records_come_back_newest_first_with_filters(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write([rec("a", t, 5000 + t) for t in (3000, 1000, 2000)])
    store.write([rec("b", 1500, 9000)])
    got = store.records("a")
    assert [item["data"]["n"] for item in got] == [3000, 2000, 1000]
    assert got[0]["created_at"] == "1970-01-01T00:00:03.000Z"
    assert got[0]["received_at"] == "1970-01-01T00:00:08.000Z"
    assert [i["data"]["n"] for i in store.records("a", since=1500, until=2500)] == [2000]
    assert [i["data"]["n"] for i in store.records("a", limit=1)] == [3000]
    assert store.records("nobody") == []
    store.close()


def test_devices_count_records_and_track_last_seen(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db.sqlite")
    store.write([rec("a", 1, 100), rec("a", 2, 300)])
    store.write([rec("a", 3, 200), rec("b", 1, 50)])
    devices = {d.device_id: d for d in store.devices()}
    assert devices["a"].record_count == 3
    assert devices["a"].last_seen == 300
    assert devices["a"].first_seen == 100
    assert devices["b"].record_count == 1
    assert store.device("a") == devices["a"]
    assert store.count() == 4
    store.close()


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = RecordStore(path)
    store.write([rec("a", 1, 1)])
    store.close()
    reopened = RecordStore(path)
    assert reopened.count() == 1
    reopened.close()


def test_reader_with_shards_sees_every_workers_file(tmp_path: Path) -> None:
    from fleetgate.store import existing_shards, shard_path

    base = tmp_path / "fleetgate.db"
    assert shard_path(base, 0) == base
    assert shard_path(base, 2) == tmp_path / "fleetgate.w2.db"
    first, second = RecordStore(shard_path(base, 0)), RecordStore(shard_path(base, 1))
    first.write([rec("a", 1000, 10), rec("a", 3000, 30), rec("b", 5, 5)])
    second.write([rec("a", 2000, 40), rec("c", 7, 7)])
    (tmp_path / "fleetgate.wx.db").write_bytes(b"")  # not a shard name: ignored
    assert existing_shards(base) == [shard_path(base, 1)]

    reader = RecordStore(base, read_shards=True)
    assert [item["data"]["n"] for item in reader.records("a")] == [3000, 2000, 1000]
    assert [item["data"]["n"] for item in reader.records("a", limit=2)] == [3000, 2000]
    assert [item["data"]["n"] for item in reader.records("a", since=1500, until=2500)] == [2000]
    devices = {d.device_id: d for d in reader.devices()}
    assert set(devices) == {"a", "b", "c"}
    assert devices["a"].record_count == 3
    assert (devices["a"].first_seen, devices["a"].last_seen) == (10, 40)
    assert reader.device("c") == devices["c"]
    assert reader.count() == 5
    # Without read_shards a worker sees only its own file.
    assert first.count() == 3
    for store in (first, second, reader):
        store.close()


def test_the_reader_sees_every_worker_file_even_past_sqlites_attach_limit(tmp_path: Path) -> None:
    # workers: 0 on a 12-core host gives 12 files; SQLite attaches at most 10 to a connection.
    base = tmp_path / "fleetgate.db"
    for index in range(12):
        writer = RecordStore(shard_path(base, index))
        writer.write(
            [
                Record(
                    "teltonika",
                    f"dev-{index}",
                    "position",
                    1_000 + index,
                    2_000 + index,
                    {"w": index},
                ),
                Record(
                    "teltonika", "shared", "position", 10_000 + index, 20_000 + index, {"w": index}
                ),
            ]
        )
        writer.close()
    reader = RecordStore(base, read_shards=True)
    try:
        devices = {device.device_id: device for device in reader.devices()}
        assert set(devices) == {f"dev-{index}" for index in range(12)} | {"shared"}
        assert devices["shared"].record_count == 12
        assert devices["shared"].first_seen == 20_000 and devices["shared"].last_seen == 20_011
        assert reader.count() == 24
        newest = reader.records("shared", limit=3)
        assert [item["data"]["w"] for item in newest] == [11, 10, 9]
        seen: list[int] = []
        page, cursor = reader.records_page("shared", limit=5)
        seen += [item["data"]["w"] for item in page]
        while cursor is not None:
            page, cursor = reader.records_page("shared", limit=5, after=cursor)
            seen += [item["data"]["w"] for item in page]
        assert seen == list(range(11, -1, -1))  # every file, each record once, newest first
    finally:
        reader.close()
