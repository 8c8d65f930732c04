"""The command queue without sockets: states on disk, restart recovery, TTL, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.command_journal import Command, CommandJournal
from fleetgate.listeners.teltonika.commands import MAX_QUEUED_PER_DEVICE, CommandCenter
from fleetgate.records import now_ms
from fleetgate.runtime import CommandRefusedError

IMEI = "352093081452251"


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


class Link:
    def __init__(self) -> None:
        self.woken = asyncio.Event()

    def wake(self) -> None:
        self.woken.set()


@pytest.fixture
async def center(tmp_path: Path) -> AsyncIterator[CommandCenter]:
    center = CommandCenter(
        TeltonikaConfig(command_queue_ttl_s=60, command_timeout_s=1), tmp_path, clock=Clock()
    )
    await center.start()
    yield center
    await center.stop()


async def test_a_queued_command_is_stored_and_taken_in_order(center: CommandCenter) -> None:
    first = await center.submit(IMEI, "getinfo")
    second = await center.submit(IMEI, "getver", codec=14)
    assert (first["status"], second["status"]) == ("queued", "queued")
    taken = center.take(IMEI)
    assert taken is not None and (taken.id, taken.command) == (first["id"], "getinfo")
    center.sent(taken)
    center.answered(taken, "INI:...")
    views = await center.history(IMEI, 10)
    assert [(v["command"], v["status"], v["codec"]) for v in views] == [
        ("getver", "queued", 14),
        ("getinfo", "answered", 12),
    ]
    assert views[1]["response"] == "INI:..." and views[1]["sent_at"] is not None


async def test_an_online_device_is_woken_and_the_caller_gets_the_answer(
    center: CommandCenter,
) -> None:
    link = Link()
    center.attach(IMEI, link)
    submit = asyncio.create_task(center.submit(IMEI, "getio"))
    await asyncio.wait_for(link.woken.wait(), 5)
    taken = center.take(IMEI)
    assert taken is not None
    center.sent(taken)
    center.answered(taken, "DI1:1")
    view = await submit
    assert (view["status"], view["response"]) == ("answered", "DI1:1")


async def test_a_reconnect_replaces_the_link_and_the_old_one_cannot_detach_it(
    center: CommandCenter,
) -> None:
    old, new = Link(), Link()
    center.attach(IMEI, old)
    center.attach(IMEI, new)
    center.detach(IMEI, old)
    assert center.connected(IMEI)
    center.detach(IMEI, new)
    assert not center.connected(IMEI)


async def test_queued_past_the_ttl_is_timed_out_not_sent(center: CommandCenter) -> None:
    clock = center.clock
    assert isinstance(clock, Clock)
    view = await center.submit(IMEI, "getinfo")
    clock.ms += 61_000
    assert center.take(IMEI) is None
    [stored] = await center.history(IMEI, 10)
    assert (stored["id"], stored["status"]) == (view["id"], "timed_out")
    assert "command_queue_ttl_s" in stored["detail"]


async def test_the_sweep_finishes_commands_of_devices_that_stay_away(
    center: CommandCenter,
) -> None:
    clock = center.clock
    assert isinstance(clock, Clock)
    await center.submit(IMEI, "getinfo")
    clock.ms += 30_000
    await center.submit(IMEI, "getver")
    clock.ms += 31_000
    center.sweep()  # the first is 61 s old, the second 31 s
    views = await center.history(IMEI, 10)
    assert [(v["command"], v["status"]) for v in views] == [
        ("getver", "queued"),
        ("getinfo", "timed_out"),
    ]


async def test_a_device_queue_is_bounded(center: CommandCenter) -> None:
    for _ in range(MAX_QUEUED_PER_DEVICE):
        await center.submit(IMEI, "getinfo")
    with pytest.raises(CommandRefusedError) as refused:
        await center.submit(IMEI, "getinfo")
    assert (refused.value.status, refused.value.code) == (429, "too_many_queued")


async def test_not_alone_a_device_not_here_is_refused(tmp_path: Path) -> None:
    center = CommandCenter(TeltonikaConfig(), tmp_path, alone=False)
    await center.start()
    try:
        with pytest.raises(CommandRefusedError) as refused:
            await center.submit(IMEI, "getinfo")
        assert (refused.value.status, refused.value.code) == (503, "device_not_here")
        assert await center.history(IMEI, 10) == []  # nothing queued where it cannot go
    finally:
        await center.stop()


async def test_after_a_crash_sent_commands_are_timed_out_and_queued_ones_kept(
    tmp_path: Path,
) -> None:
    journal = CommandJournal(tmp_path / "commands.db")
    journal.open()
    now = now_ms()
    sent = Command(0, IMEI, "cpureset", 12, "sent", now - 2, sent_at=now - 1)
    sent.id = journal.insert(sent)
    queued = Command(0, IMEI, "getinfo", 12, "queued", now)
    queued.id = journal.insert(queued)
    journal.close()  # no stop: the process died here

    center = CommandCenter(TeltonikaConfig(), tmp_path)
    await center.start()
    try:
        views = {v["id"]: v for v in await center.history(IMEI, 10)}
        assert views[sent.id]["status"] == "timed_out"
        assert views[sent.id]["detail"] == "the server stopped before the device answered"
        assert views[queued.id]["status"] == "queued"
        taken = center.take(IMEI)
        assert taken is not None and taken.id == queued.id
        assert center.take(IMEI) is None  # the sent one is never sent twice
    finally:
        await center.stop()
