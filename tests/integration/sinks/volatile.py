"""Kill/restart checks for sinks whose test server keeps everything in memory.

Tansu, moto and drongo lose all data (and topics, streams, subscriptions) when they stop,
so the suite's "confirmed means stored across a restart" test cannot apply to them. What
can still be proven, exactly:

1. everything the sink confirmed while the server was up is on the server, read back by an
   independent consumer *before* the server is killed;
2. the server is killed under a live sink connection; records submitted while it is down
   are not confirmed, the runner reports the sink unhealthy and keeps them;
3. the server comes back on the same port (the harness recreates streams/topics there),
   and every record submitted during and after the outage arrives, confirmed, health ok.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fleetgate.pipeline.runner import SinkRunner
from fleetgate.records import Record
from fleetgate.sinks.base import Health, SinkContext
from tests.integration.sinks.conformance import (
    Feeder,
    SinkHarness,
    assert_all_delivered,
    await_all,
    bounded,
    chunks,
    collect,
    eventually,
    fast_settings,
    make_records,
)


async def _submit(feeder: Feeder, records: Sequence[Record]) -> list[asyncio.Task[bool]]:
    return [await feeder.submit(part) for part in chunks(records, 50)]


async def kill_and_restart_under_live_sink(harness: SinkHarness, ctx: SinkContext) -> None:
    records = make_records(3000)
    before, during, after = records[:1200], records[1200:2200], records[2200:]
    sink = await harness.make_sink(ctx)
    runner = SinkRunner(sink, fast_settings(max_batch=200))
    feeder = Feeder(runner)
    await runner.start()
    try:
        await await_all(await _submit(feeder, before))
        # 1. confirmed → on the server, seen before the kill.
        assert_all_delivered(before, await harness.read_back(len(before), 10), ctx)

        # 2. kill under the live connection; what arrives meanwhile waits, unconfirmed.
        await harness.stop_server()
        waiting = await _submit(feeder, during)
        await eventually(lambda: runner.health is not Health.OK, "the sink to notice")
        assert not any(f.done() for f in waiting), "confirmed while the server was down"
        assert runner.queued == len(during)

        # 3. back on the same port: the backlog and new records arrive.
        await harness.start_server()
        waiting += await _submit(feeder, after)
        await await_all(waiting, timeout=60)
        assert runner.health is Health.OK
        expected = [*during, *after]
        delivered = await collect(harness, expected, ctx, timeout=30)
        assert_all_delivered(expected, delivered, ctx)
    finally:
        await bounded(runner.close(), "runner.close()")
