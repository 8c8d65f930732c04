"""``monitoring.profiler_port``: the reference's profiling endpoints, for a Python server.

Tesla's server serves Go's pprof and a live tracer on ``profiler_host:profiler_port``
(loopback by default). fleetgate serves the same paths with what Python has, all on the
event loop's thread, which is where fleetgate's work runs:

* ``/debug/pprof/``: an index of the endpoints below.
* ``/debug/pprof/profile?seconds=N`` (default 30, at most 300): a cProfile of the event
  loop for N seconds, as a ``pstats`` file (``python -m pstats FILE``, snakeviz...).
* ``/debug/pprof/goroutine``: the stack of every asyncio task and thread, as text (Go's
  ``goroutine?debug=2``).
* ``/debug/pprof/cmdline``: the command line, NUL-separated, as Go serves it.
* ``/gc_stats``: the garbage collector's statistics as JSON (``gc.get_stats()``, counts,
  thresholds) and the resident memory.
* ``/live_profiler?mode=on|off``: with ``monitoring.profiling_path``, ``on`` starts a
  cProfile of the event loop and ``off`` stops it and writes the ``pstats`` file to that
  path (the reference writes a Go execution trace there). Answers as the reference does:
  405 ``{"error":"profiler not configured"}`` without a path, 400 ``{"error":"mode not
  specified"}``, 200 ``{"result":"mode on"}``, 304 when already in that mode.

Go's ``heap``, ``symbol`` and ``trace`` profiles have no Python equivalent: 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson

from fleetgate.observability.process_metrics import resident_bytes

log = logging.getLogger("fleetgate.profiler")

MAX_PROFILE_S = 300.0
INDEX = b"""fleetgate profiling endpoints (Python equivalents of Go's pprof):
/debug/pprof/profile?seconds=30  cProfile of the event loop, pstats file
/debug/pprof/goroutine           stacks of every asyncio task and thread
/debug/pprof/cmdline             command line
/gc_stats                        garbage collector statistics (JSON)
/live_profiler?mode=on|off       cProfile to monitoring.profiling_path
"""


class ProfilerServer:
    """HTTP on ``host:port`` answering the profiling paths (GET only)."""

    def __init__(self, host: str, port: int, profiling_path: str = "") -> None:
        self.host = host
        self.port = port
        self.profiling_path = profiling_path
        self._server: asyncio.Server | None = None
        self._live: cProfile.Profile | None = None
        self._busy = False  # one cProfile at a time (Python allows one profiler)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        log.info("profiler_started", extra={"fields": {"address": self.address}})

    async def stop(self) -> None:
        if self._live is not None:
            self._live.disable()
            self._live = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    @property
    def address(self) -> str:
        if self._server is None or not self._server.sockets:
            return f"{self.host}:{self.port}"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            target = parts[1] if len(parts) >= 2 else "/"
            status, kind, body = await self.answer(target)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def answer(self, target: str) -> tuple[str, str, bytes]:
        """Status line, content type and body for ``target`` (a path with its query)."""
        url = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        path = url.path
        if path in ("/debug/pprof", "/debug/pprof/"):
            return "200 OK", "text/plain; charset=utf-8", INDEX
        if path == "/debug/pprof/cmdline":
            return "200 OK", "text/plain; charset=utf-8", "\x00".join(sys.argv).encode()
        if path == "/debug/pprof/goroutine":
            return "200 OK", "text/plain; charset=utf-8", stacks().encode()
        if path == "/debug/pprof/profile":
            return await self._profile(query.get("seconds", "30"))
        if path == "/gc_stats":
            return "200 OK", "application/json", orjson.dumps(gc_stats())
        if path == "/live_profiler":
            return self._live_profiler(query.get("mode"))
        return "404 Not Found", "text/plain; charset=utf-8", b"404 page not found\n"

    async def _profile(self, seconds_text: str) -> tuple[str, str, bytes]:
        try:
            seconds = min(float(seconds_text), MAX_PROFILE_S)
        except ValueError:
            return "400 Bad Request", "text/plain; charset=utf-8", b"bad seconds\n"
        if self._busy:
            return "409 Conflict", "text/plain; charset=utf-8", b"a profile is running\n"
        self._busy = True
        profile = cProfile.Profile()
        try:
            profile.enable()
            await asyncio.sleep(max(seconds, 0.0))
            profile.disable()
        finally:
            self._busy = False
        return "200 OK", "application/octet-stream", _pstats_bytes(profile)

    def _live_profiler(self, mode: str | None) -> tuple[str, str, bytes]:
        if not self.profiling_path:
            body = b'{"error":"profiler not configured"}'
            return "405 Method Not Allowed", "application/json", body
        if not mode:
            return "400 Bad Request", "application/json", b'{"error":"mode not specified"}'
        wanted = "on" if mode == "on" else "off"
        current = "on" if self._live is not None else "off"
        if wanted == current:
            body = orjson.dumps({"result": f"mode already {wanted}"})
            return "304 Not Modified", "application/json", body
        if wanted == "on":
            if self._busy:
                return "409 Conflict", "application/json", b'{"error":"a profile is running"}'
            self._busy = True
            self._live = cProfile.Profile()
            self._live.enable()
        else:
            assert self._live is not None
            self._live.disable()
            self._live.dump_stats(self.profiling_path)
            self._live = None
            self._busy = False
            log.info("live profile written", extra={"fields": {"path": self.profiling_path}})
        return "200 OK", "application/json", orjson.dumps({"result": f"mode {wanted}"})


def _pstats_bytes(profile: cProfile.Profile) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "profile.pstats"
        profile.dump_stats(path)
        return path.read_bytes()


def gc_stats() -> dict[str, object]:
    """The collector's state, like the reference's ``/gc_stats`` (Go's ``GCStats``)."""
    return {
        "generations": gc.get_stats(),
        "count": gc.get_count(),
        "threshold": gc.get_threshold(),
        "enabled": gc.isenabled(),
        "resident_bytes": resident_bytes(),
    }


def stacks() -> str:
    """Every asyncio task's stack and every thread's, as text."""
    out = io.StringIO()
    with contextlib.suppress(RuntimeError):
        for task in asyncio.all_tasks():
            out.write(f"task {task.get_name()}:\n")
            task.print_stack(file=out)
            out.write("\n")
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            out.write(f"thread {thread.name}:\n")
            out.write("".join(traceback.format_stack(frame)))
            out.write("\n")
    return out.getvalue()
