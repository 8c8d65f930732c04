"""Where a Teltonika frame's ack time goes inside the server, stage by stage.

Runs ``fleetgate serve`` in a child process with timestamps patched around the ingest path
(nothing in ``src`` changes), drives it with ``fleetgate bench load`` and prints, for all
frames and for the slowest 1 %, how long each stage took::

    recv     data_received: reading the bytes, framing and decoding the frame
    queue    the session's worker task waking up for the event
    records  to_records (the frame's Records)
    append   Pipeline._append (offsets, spool encoding and append, sink queues)
    to_sync  waiting for the commit thread to take the frame's group (a write in progress)
    sync     the group's write and fdatasync
    post     the commit thread's "durable" reaching the loop (call_soon_threadsafe)
    wake     the loop resuming the session's task once the ledger settled it
    ack      the task writing the ack

It also prints the loop's lag (a 1 ms heartbeat), the garbage collector's pauses and, for
lags over ``--stall-ms``, where the loop thread was (sampled from another thread).

    PYTHONPATH=$PWD/src .venv/bin/python bench/ack_stages.py --trackers 1000 --rate 2.4 \\
        --duration 15 --config '{"store": {"enabled": false}}' [--source OTHER/src]

The patches name internals (``TeltonikaSession._handle``, ``Pipeline._append``,
``_Writer.write``, ``Spool._committed``); both trees measured must have them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("recv", "queue", "records", "append", "to_sync", "sync", "post", "wake", "ack")


# -- the server side: patches, then fleetgate serve ------------------------------------------
def serve_traced(config_path: str, trace_path: str, stall_ms: float) -> None:
    import asyncio
    import collections
    import gc
    import threading
    import traceback
    from time import perf_counter

    from fleetgate.listeners.teltonika import tcp
    from fleetgate.pipeline import pipeline as pipeline_module
    from fleetgate.pipeline import spool as spool_module
    from fleetgate.protocols.teltonika.events import AvlFrame

    frames: list[tuple[float, ...]] = []
    commits: list[tuple[int, float, float, int]] = []
    posted: list[tuple[int, float]] = []
    gcs: list[tuple[float, float, int]] = []
    lags: list[tuple[float, float]] = []
    stalls: collections.Counter[str] = collections.Counter()
    current: dict[Any, dict[str, float]] = {}
    current_task = asyncio.current_task

    received = tcp.TeltonikaSession.data_received

    def data_received(self: Any, data: bytes) -> None:
        start = perf_counter()
        before = len(self._events)
        mark = current[None] = {"recv": start}  # a frame taken at once (no task) marks it
        received(self, data)
        del current[None]
        if "appended" in mark:
            self._mark = mark
        added = len(self._events) - before
        if added > 0:
            queue = self.__dict__.setdefault("_trace", collections.deque())
            end = perf_counter()
            for _ in range(added):
                queue.append((start, end))

    handle = tcp.TeltonikaSession._handle

    async def traced_handle(self: Any, event: Any) -> None:
        start, end = self._trace.popleft()
        if not isinstance(event, AvlFrame):
            await handle(self, event)
            return
        mark = {"recv": start, "decoded": end, "handle": perf_counter()}
        task = current_task()
        current[task] = self._mark = mark
        try:
            await handle(self, event)
        finally:
            current.pop(task, None)

    accept = pipeline_module.Pipeline.accept

    async def traced_accept(self: Any, records: Any) -> bool:
        mark = current.get(current_task())
        if mark is not None:
            mark["accept"] = perf_counter()
        result = await accept(self, records)
        if mark is not None:
            mark["woken"] = perf_counter()
        return result

    accept_then = getattr(pipeline_module.Pipeline, "accept_then", None)

    async def traced_accept_then(self: Any, records: Any, answer: Any) -> None:
        mark = current.get(current_task())
        if mark is not None:
            mark["accept"] = perf_counter()
        assert accept_then is not None
        await accept_then(self, records, answer)

    accept_now = getattr(pipeline_module.Pipeline, "accept_now", None)

    def traced_accept_now(self: Any, records: Any, answer: Any) -> bool:
        mark = current.get(current_task())
        if mark is not None and "handle" not in mark:
            # Taken in data_received: decoding and the Records are in "recv".
            mark["decoded"] = mark["handle"] = mark["accept"] = perf_counter()
        assert accept_now is not None
        return bool(accept_now(self, records, answer))

    append = pipeline_module.Pipeline._append

    async def traced_append(self: Any, records: Any, uniform: bool) -> int:
        last = await append(self, records, uniform)
        mark = current.get(current_task())
        if mark is not None:
            mark["appended"] = perf_counter()
            mark["off"] = last
        return last

    enqueue = getattr(pipeline_module.Pipeline, "_enqueue", None)

    def traced_enqueue(self: Any, *args: Any) -> int:
        assert enqueue is not None
        last = int(enqueue(self, *args))
        mark = current.get(current_task())
        if mark is not None:
            mark["appended"] = perf_counter()
            mark["off"] = last
        return last

    send = tcp.TeltonikaSession._send

    def traced_send(self: Any, data: bytes) -> None:
        send(self, data)
        mark = self.__dict__.get("_mark")
        if mark is not None and "appended" in mark and "ack" not in mark:
            # From the task resumed after accept (woken set) or from the ledger itself.
            mark["ack"] = perf_counter()
            mark.setdefault("woken", mark["ack"])
            frames.append(
                tuple(
                    mark[k]
                    for k in (
                        "recv",
                        "decoded",
                        "handle",
                        "accept",
                        "appended",
                        "off",
                        "woken",
                        "ack",
                    )
                )
            )

    write = spool_module._Writer.write

    def traced_write(self: Any, first: int, parts: Any) -> int:
        start = perf_counter()
        size = write(self, first, parts)
        commits.append((first, start, perf_counter(), len(parts)))
        return size

    committed = spool_module.Spool._committed

    def traced_committed(self: Any, last: int, *args: Any) -> None:
        posted.append((last, perf_counter()))
        committed(self, last, *args)

    tcp.TeltonikaSession.data_received = data_received  # type: ignore[method-assign]
    tcp.TeltonikaSession._handle = traced_handle  # type: ignore[method-assign]
    tcp.TeltonikaSession._send = traced_send  # type: ignore[method-assign]
    pipeline_module.Pipeline.accept = traced_accept  # type: ignore[method-assign]
    if accept_then is not None:
        pipeline_module.Pipeline.accept_then = traced_accept_then  # type: ignore[method-assign]
    if enqueue is not None:
        pipeline_module.Pipeline._enqueue = traced_enqueue  # type: ignore[method-assign]
    else:
        pipeline_module.Pipeline._append = traced_append  # type: ignore[method-assign]
    if accept_now is not None:
        pipeline_module.Pipeline.accept_now = traced_accept_now  # type: ignore[method-assign]
    spool_module._Writer.write = traced_write  # type: ignore[method-assign]
    spool_module.Spool._committed = traced_committed  # type: ignore[method-assign]

    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = perf_counter()
        else:
            gcs.append((gc_start[0], perf_counter() - gc_start[0], info["generation"]))

    gc.callbacks.append(on_gc)

    main_ident = threading.get_ident()
    beat = [perf_counter()]

    def heartbeat() -> None:
        now = perf_counter()
        late = now - beat[0] - 0.001
        if late > 0.002:
            lags.append((now, late))
        beat[0] = now
        asyncio.get_running_loop().call_later(0.001, heartbeat)

    def sampler() -> None:
        # Where the loop thread is when its heartbeat is late (a stall in progress).
        while True:
            time.sleep(0.001)
            if perf_counter() - beat[0] > stall_ms / 1000:
                frame = sys._current_frames().get(main_ident)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-6:]
                    stalls[
                        " < ".join(
                            f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(stack)
                        )
                    ] += 1

    threading.Thread(target=sampler, daemon=True).start()

    from fleetgate import app

    ticks: list[tuple[float, float]] = []
    tick = app.CollectorPacer.tick

    def traced_tick(self: Any) -> None:
        start = perf_counter()
        tick(self)
        ticks.append((perf_counter() - start, getattr(self, "counts", -1)))

    app.CollectorPacer.tick = traced_tick  # type: ignore[method-assign]
    serve = app.serve

    async def traced_serve(*args: Any, **kwargs: Any) -> None:
        asyncio.get_running_loop().call_later(0.001, heartbeat)
        await serve(*args, **kwargs)

    app.serve = traced_serve  # type: ignore[assignment]
    from fleetgate.commands import serve as serve_command

    serve_command.serve = traced_serve  # type: ignore[assignment]
    try:
        from fleetgate.cli import main

        main(["serve", "--config", config_path])
    finally:
        Path(trace_path).write_text(
            json.dumps(
                {
                    "frames": frames,
                    "commits": commits,
                    "posted": posted,
                    "gcs": gcs,
                    "lags": lags,
                    "ticks": ticks,
                    "stalls": stalls.most_common(25),
                }
            )
        )


# -- the driver: start, load, analyse ----------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(trace: dict[str, Any], skip_s: float) -> dict[str, Any]:
    commits = sorted(trace["commits"])
    firsts = [c[0] for c in commits]
    posted = sorted(trace["posted"])
    post_lasts = [p[0] for p in posted]
    rows = []
    frames = trace["frames"]
    if not frames:
        return {}
    t0 = min(f[0] for f in frames) + skip_s
    for recv, decoded, handle, accept, appended, off, woken, ack in frames:
        if recv < t0:
            continue
        i = bisect_right(firsts, off) - 1
        j = next(
            (
                k
                for k in range(max(0, bisect_right(post_lasts, off - 1)), len(posted))
                if posted[k][0] >= off
            ),
            None,
        )
        if i < 0 or j is None:
            continue
        _, w_start, w_end, _ = commits[i]
        cb = posted[j][1]
        rows.append(
            {
                "recv": decoded - recv,
                "queue": handle - decoded,
                "records": accept - handle,
                "append": appended - accept,
                "to_sync": w_start - appended,
                "sync": w_end - w_start,
                "post": cb - w_end,
                "wake": woken - cb,
                "ack": ack - woken,
                "total": ack - recv,
            }
        )
    totals = [r["total"] for r in rows]
    p99 = percentile(totals, 0.99)
    tail = [r for r in rows if r["total"] >= p99]
    out: dict[str, Any] = {"frames": len(rows)}
    for name in (*STAGES, "total"):
        values = [r[name] * 1000 for r in rows]
        out[name] = {
            "mean": sum(values) / len(values),
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "tail_mean": sum(r[name] for r in tail) * 1000 / max(1, len(tail)),
        }
    sizes = [c[3] for c in commits]
    syncs = [(c[2] - c[1]) * 1000 for c in commits]
    out["commits"] = {
        "count": len(commits),
        "frames_mean": sum(sizes) / max(1, len(sizes)),
        "sync_p50": percentile(syncs, 0.5),
        "sync_p99": percentile(syncs, 0.99),
    }
    pauses = [g[1] * 1000 for g in trace["gcs"] if g[0] >= t0]
    out["gc"] = {"count": len(pauses), "max": max(pauses, default=0.0), "sum": sum(pauses)}
    lags = [lag[1] * 1000 for lag in trace["lags"]]
    out["lag"] = {
        "over_2ms": len(lags),
        "p99_of_those": percentile(lags, 0.99),
        "max": max(lags, default=0.0),
    }
    ticks = [t[0] * 1000 for t in trace.get("ticks", [])[20:]]
    out["pacer"] = {
        "ticks": len(ticks),
        "p50": percentile(ticks, 0.5),
        "max": max(ticks, default=0.0),
        "walks_last": trace["ticks"][-1][1] if ticks else 0,
    }
    out["stalls"] = trace["stalls"][:12]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trackers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2.4)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--config", default='{"store": {"enabled": false}}')
    parser.add_argument("--source", default=None, help="another tree's src")
    parser.add_argument("--stall-ms", type=float, default=5.0)
    parser.add_argument("--skip", type=float, default=2.0, help="seconds of warm-up ignored")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_traced(args.serve[0], args.serve[1], float(args.serve[2]))
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from procstats import free_port

    work = Path(tempfile.mkdtemp(prefix="ackstages-"))
    port = free_port()
    config = {
        "data_dir": str(work / "data"),
        "teltonika": {"host": "127.0.0.1", "port": port, "udp_enabled": False},
        "api": {"enabled": False},
        "tesla_enabled": False,
        **json.loads(args.config),
    }
    (work / "c.json").write_text(json.dumps(config))
    env = dict(os.environ)
    if args.source:
        env["PYTHONPATH"] = args.source
    trace_path = work / "trace.json"
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(work / "c.json"),
            str(trace_path),
            str(args.stall_ms),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.log", "wb"),  # noqa: SIM115
    )
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    time.sleep(0.5)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgate",
            "bench",
            "load",
            "--teltonika",
            str(args.trackers),
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--teltonika-port",
            str(port),
            "--server-pid",
            str(server.pid),
            "--json",
        ],
        capture_output=True,
        check=False,
    )
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    text = out.stdout.decode()
    report = json.loads(text[: text.rindex("}") + 1])
    latency = report["protocols"]["teltonika"]["latency_ms"]
    result = analyse(json.loads(trace_path.read_text()), args.skip)
    print(
        f"client: p50 {latency['p50']:.2f} p99 {latency['p99']:.2f} p99.9 "
        f"{latency['p999']:.2f} ms, {report['protocols']['teltonika']['acked_per_s']:.0f} "
        f"acked/s, server CPU {report['server']['cpu_per_s']:.2f}"
    )
    print(f"server-side, {result['frames']} frames (ms):")
    print(f"{'stage':<8} {'mean':>7} {'p50':>7} {'p99':>7} {'mean in slowest 1%':>20}")
    for name in (*STAGES, "total"):
        s = result[name]
        print(
            f"{name:<8} {s['mean']:>7.2f} {s['p50']:>7.2f} {s['p99']:>7.2f} {s['tail_mean']:>20.2f}"
        )
    print("commits:", json.dumps(result["commits"]))
    print("gc:", json.dumps(result["gc"]))
    print("loop lag:", json.dumps(result["lag"]))
    print("gc pacer tick (ms):", json.dumps(result["pacer"]))
    for stack, count in result["stalls"]:
        print(f"  stall {count:>4} {stack}")


if __name__ == "__main__":
    main()
