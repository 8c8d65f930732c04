"""Commands between nodes through a real Redis (teltonika.command_routing).

Each "node" is a :class:`RoutedCommandCenter` with its own node id, as every worker and
node runs one; the devices are sessions' stand-ins that take a command when woken, mark it
sent and answer it (or not), as :mod:`fleetgate.listeners.teltonika.tcp` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fleetgate.config import CommandRoutingConfig, TeltonikaConfig
from fleetgate.listeners.teltonika.command_journal import Command
from fleetgate.listeners.teltonika.command_routing import RoutedCommandCenter
from fleetgate.observability import metrics
from fleetgate.runtime import CommandRefusedError
from tests.integration.services import ManagedProcess

pytestmark = pytest.mark.integration

IMEI = "352093081452251"
WAIT = 10.0


class Device:
    """A connected tracker: takes its next command when woken and none is in flight (one
    at a time, as a session sends them); answers unless told not to."""

    def __init__(self, center: RoutedCommandCenter, imei: str = IMEI, answer: bool = True):
        self.center = center
        self.imei = imei
        self.answer = answer
        self.taken: list[Command] = []
        self.busy = False
        self._woken = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        center.attach(imei, self)

    def wake(self) -> None:
        self._woken.set()

    async def _run(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            while not self.busy and (item := self.center.take(self.imei)) is not None:
                self.taken.append(item)
                self.center.sent(item)
                if self.answer:
                    self.center.answered(item, f"{item.command}: ok from {self.center.node_id}")
                else:
                    self.busy = True  # waits for an answer that never comes

    def leave(self) -> None:
        self.center.detach(self.imei, self)
        self._task.cancel()


@pytest.fixture
def make_node(private_redis: ManagedProcess) -> Callable[..., Any]:
    prefix = f"fleetgate-test:{uuid.uuid4().hex[:8]}"
    routing = CommandRoutingConfig(
        url=f"redis://127.0.0.1:{private_redis.port}/0", key_prefix=prefix, timeout_s=1.0
    )

    async def make(node_id: str, **settings: Any) -> RoutedCommandCenter:
        center = RoutedCommandCenter(
            TeltonikaConfig(command_timeout_s=2.0, **settings), routing, node_id
        )
        await center.start()
        return center

    return make


@pytest.fixture
async def nodes(make_node: Callable[..., Any]) -> AsyncIterator[list[RoutedCommandCenter]]:
    started = [await make_node("node-a"), await make_node("node-b"), await make_node("node-c")]
    yield started
    for center in started:
        await center.stop()


async def eventually(check: Callable[[], Any], timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_a_command_reaches_the_device_on_another_node_and_the_answer_comes_back(
    nodes: list[RoutedCommandCenter],
) -> None:
    a, b, _ = nodes
    device = Device(b)
    await asyncio.sleep(0.1)  # b has told Redis where the device is
    view = await a.submit(IMEI, "getinfo", wait_s=WAIT)
    assert view["status"] == "answered"
    assert view["response"] == "getinfo: ok from node-b"
    # Any node reads the same state and history (ids are one sequence for all nodes).
    assert await b.get(IMEI, view["id"]) == view
    assert [item["id"] for item in await a.history(IMEI, 10)] == [view["id"]]
    assert await a.get("359999999999999", view["id"]) is None
    device.leave()


async def test_a_command_for_a_device_held_here_goes_straight_to_it(
    nodes: list[RoutedCommandCenter],
) -> None:
    a = nodes[0]
    device = Device(a)
    view = await a.submit(IMEI, "getver", wait_s=WAIT)
    assert view["status"] == "answered" and view["response"] == "getver: ok from node-a"
    device.leave()


async def test_a_device_offline_everywhere_gets_its_commands_on_any_node_in_order(
    nodes: list[RoutedCommandCenter],
) -> None:
    a, b, c = nodes
    first = await a.submit(IMEI, "getinfo", wait_s=WAIT)
    second = await b.submit(IMEI, "getver", wait_s=WAIT)
    # Nobody holds the device: queued at once, not after the wait.
    assert (first["status"], second["status"]) == ("queued", "queued")
    device = Device(c)
    await eventually(lambda: len(device.taken) == 2)
    assert [item.command for item in device.taken] == ["getinfo", "getver"]
    for command_id in (first["id"], second["id"]):
        async def answered(command_id: int = command_id) -> bool:
            view = await a.get(IMEI, command_id)
            return view is not None and view["status"] == "answered"

        for _ in range(200):
            if await answered():
                break
            await asyncio.sleep(0.02)
        assert await answered()
    device.leave()


async def test_commands_a_leaving_device_did_not_get_follow_it_to_its_next_node(
    nodes: list[RoutedCommandCenter],
) -> None:
    a, b, c = nodes
    device = Device(b, answer=False)
    await asyncio.sleep(0.1)
    # b holds the device, which takes the first command and never answers it; the second
    # waits behind it in b's queue.
    sent = await a.submit(IMEI, "getinfo", wait_s=0.5)
    assert sent["status"] == "sent"
    waiting = await a.submit(IMEI, "getver", wait_s=0.3)
    assert waiting["status"] == "queued"
    assert [item.id for item in b._queues[IMEI]] == [waiting["id"]]  # claimed by b
    device.leave()
    # The device comes back on c: the command b claimed but never sent goes there.
    moved = Device(c)
    await eventually(lambda: [item.id for item in moved.taken] == [waiting["id"]])
    view = await a.get(IMEI, waiting["id"])
    for _ in range(200):
        view = await a.get(IMEI, waiting["id"])
        if view is not None and view["status"] == "answered":
            break
        await asyncio.sleep(0.02)
    assert view is not None and view["response"] == "getver: ok from node-c"
    moved.leave()


async def test_a_node_that_crashed_gets_back_what_it_had_claimed_at_its_next_start(
    make_node: Callable[..., Any],
) -> None:
    a = await make_node("node-a")
    crashed = await make_node("node-b")
    device = Device(crashed, answer=False)
    await asyncio.sleep(0.1)
    sent = await a.submit(IMEI, "getinfo", wait_s=0.5)
    queued = await a.submit(IMEI, "getver", wait_s=0.3)
    assert (sent["status"], queued["status"]) == ("sent", "queued")
    # node-b dies: no detach, no stop, nothing given back.
    device._task.cancel()
    for task in (crashed._listener, crashed._sweeper, crashed._worker):
        assert task is not None
        task.cancel()
    assert crashed.client is not None
    await crashed.client.aclose()
    # Restarted under the same node id: the sent command may have run, so it is timed
    # out (never sent twice); the claimed one goes back to the queue for the device.
    restarted = await make_node("node-b")
    try:
        lost = await a.get(IMEI, sent["id"])
        for _ in range(200):
            lost = await a.get(IMEI, sent["id"])
            if lost is not None and lost["status"] == "timed_out":
                break
            await asyncio.sleep(0.02)
        assert lost is not None and lost["status"] == "timed_out"
        assert "stopped before the device answered" in lost["detail"]
        device = Device(a)
        await eventually(lambda: [item.id for item in device.taken] == [queued["id"]])
        device.leave()
    finally:
        await restarted.stop()
        await a.stop()


async def test_a_command_queued_past_its_ttl_times_out(make_node: Callable[..., Any]) -> None:
    a = await make_node("node-a", command_queue_ttl_s=0.1)
    try:
        view = await a.submit(IMEI, "getinfo", wait_s=0.1)
        assert view["status"] == "queued"
        await asyncio.sleep(0.3)
        await a._call(a._claim_waiting)  # the minute's sweep, now
        await a._call(_noop)  # and the state it wrote
        final = await a.get(IMEI, view["id"])
        assert final is not None and final["status"] == "timed_out"
        assert "command_queue_ttl_s" in final["detail"]
        # A device that connects later gets nothing.
        device = Device(a)
        await asyncio.sleep(0.2)
        assert device.taken == []
        device.leave()
    finally:
        await a.stop()


async def test_more_than_100_waiting_commands_are_refused(
    nodes: list[RoutedCommandCenter],
) -> None:
    a = nodes[0]
    for _ in range(100):
        await a.submit(IMEI, "getinfo", wait_s=0)
    with pytest.raises(CommandRefusedError) as refused:
        await a.submit(IMEI, "getinfo", wait_s=0)
    assert (refused.value.status, refused.value.code) == (429, "too_many_queued")


async def test_redis_away_is_a_503_and_commands_work_again_once_it_is_back(
    nodes: list[RoutedCommandCenter], private_redis: ManagedProcess
) -> None:
    a, b, _ = nodes
    device = Device(b)
    private_redis.kill()
    try:
        with pytest.raises(CommandRefusedError) as refused:
            await a.submit(IMEI, "getinfo", wait_s=1)
        assert (refused.value.status, refused.value.code) == (503, "routing_unavailable")
        with pytest.raises(CommandRefusedError) as refused:
            await a.history(IMEI, 10)
        assert refused.value.status == 503  # the API answers 503 for the list too
    finally:
        private_redis.start()
    # The subscription comes back by itself; b says again where the device is when it
    # reconnects (here: the session attaches again).
    device.leave()
    device = Device(b)
    for _ in range(100):
        try:
            view = await a.submit(IMEI, "getinfo", wait_s=WAIT)
            break
        except CommandRefusedError:
            await asyncio.sleep(0.1)
    # Answered at once if b listens again already; otherwise queued until b's subscription
    # is back (it retries with a backoff of up to RESUBSCRIBE_MAX_S) and claims it.
    deadline = asyncio.get_running_loop().time() + 3 * WAIT
    while view["status"] != "answered":
        assert view["status"] in ("queued", "sent"), view
        assert asyncio.get_running_loop().time() < deadline, "never answered"
        await asyncio.sleep(0.1)
        current = await a.get(IMEI, view["id"])
        assert current is not None
        view = current
    device.leave()


async def _noop() -> None:
    return None


async def until_answered(center: RoutedCommandCenter, view: dict[str, Any]) -> dict[str, Any]:
    """The command's state once answered, read through ``center`` (Redis may still be
    coming back: a refused read is tried again)."""
    deadline = asyncio.get_running_loop().time() + 3 * WAIT
    while view["status"] != "answered":
        assert asyncio.get_running_loop().time() < deadline, f"still {view['status']}"
        await asyncio.sleep(0.1)
        with contextlib.suppress(CommandRefusedError):
            view = await center.get(IMEI, view["id"]) or view
    return view


def _writes_waiting() -> float:
    return metrics.REGISTRY.get_sample_value("fleetgate_teltonika_command_writes_waiting") or 0.0


async def test_an_answer_that_came_while_redis_was_away_is_recorded_once_it_is_back(
    nodes: list[RoutedCommandCenter], private_redis: ManagedProcess
) -> None:
    a, b, _ = nodes
    device = Device(b, answer=False)
    view = await a.submit(IMEI, "getinfo", wait_s=0.2)
    await eventually(lambda: device.taken)
    item = device.taken[0]
    before = _writes_waiting()
    private_redis.kill()
    try:
        b.answered(item, "getinfo: answered during the outage")
        await eventually(lambda: _writes_waiting() > before)  # the state write failed
    finally:
        private_redis.start()
    # No reconnect of the device, no new command: the write runs again by itself.
    view = await until_answered(a, view)
    assert view["response"] == "getinfo: answered during the outage"
    await eventually(lambda: _writes_waiting() == before)
    device.leave()


async def test_a_waiter_whose_done_message_was_lost_wakes_when_its_node_resubscribes(
    nodes: list[RoutedCommandCenter], private_redis: ManagedProcess
) -> None:
    a, b, _ = nodes
    device = Device(b)
    first = await a.submit(IMEI, "getver", wait_s=WAIT)  # Redis knows where the device is
    assert first["status"] == "answered"
    private_redis.kill()
    private_redis.start()
    # a's subscription is down until its backoff ends, so b's "done" message may reach
    # nobody; a still answers as soon as the command is answered, not at wait_s.
    view: dict[str, Any] | None = None
    while view is None:
        with contextlib.suppress(CommandRefusedError):
            view = await a.submit(IMEI, "getinfo", wait_s=3600)
    assert view["status"] == "answered"
    device.leave()


async def test_a_write_that_fails_for_another_reason_than_the_outage_holds_up_nothing(
    nodes: list[RoutedCommandCenter], private_redis: ManagedProcess
) -> None:
    a, b, _ = nodes
    device = Device(b, answer=False)
    view = await a.submit(IMEI, "getinfo", wait_s=0.2)
    await eventually(lambda: device.taken)
    before = _writes_waiting()
    private_redis.kill()
    try:

        async def broken() -> None:  # a write whose arguments Redis will never take
            raise ValueError("not a Redis outage")

        b._enqueue(broken)
        b.answered(device.taken[0], "getinfo: answered during the outage")
        await eventually(lambda: _writes_waiting() > before)
        assert _writes_waiting() == before + 1, "only the outage's write waits"
    finally:
        private_redis.start()
    view = await until_answered(a, view)
    device.leave()
