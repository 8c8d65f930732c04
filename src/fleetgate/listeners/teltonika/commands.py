"""Commands to Teltonika trackers: one queue per device, states, waiting for answers.

The API hands a command to :meth:`CommandCenter.submit` (the
:class:`~fleetgate.runtime.DeviceCommands` interface); the center stores it as ``queued``
(:mod:`.command_journal`) and wakes the device's session when the device is connected. The
session (:mod:`.tcp`) writes it to the socket itself, through its one write path, when the
device is between frames, and reports what happens::

    queued ──take()/sent()──> sent ──answered()──> answered
       │                        ├───nacked()────> nack        (codec 14: not its IMEI)
       │                        └──timed_out()──> timed_out   (no answer in time, or the
       └── not delivered within command_queue_ttl_s ──> timed_out    connection closed)

One command is in flight per connection (codec 12 answers carry no id: the next response
answers the command sent). A device that is not connected keeps its commands queued until
its next connection, at most ``command_queue_ttl_s``, and at most
:data:`MAX_QUEUED_PER_DEVICE` of them.

Several worker processes or nodes: the API runs in worker 0 of one node, a device may be
connected to any worker of any node. With ``teltonika.command_routing`` the commands and
their states live in Redis and reach the process holding the device
(:mod:`.command_routing`); without it, with ``workers`` > 1 a command for a device not
connected to this process is refused with 503 (``device_not_here``) instead of being queued
where the device may never come.

Disk writes run on one thread of their own, in order; a ``GET`` reads after the writes
queued before it, so it always sees the states the center has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from fleetgate.config import TeltonikaConfig
from fleetgate.listeners.teltonika.command_journal import (
    ANSWERED,
    NACK,
    QUEUED,
    SENT,
    TIMED_OUT,
    Command,
    CommandJournal,
)
from fleetgate.observability import metrics
from fleetgate.observability.logging import fields
from fleetgate.protocols.teltonika.framing import IMEI_MAX_LENGTH
from fleetgate.protocols.teltonika.model import CODEC_12, CODEC_14
from fleetgate.records import now_ms
from fleetgate.runtime import CommandRefusedError

log = logging.getLogger("fleetgate.teltonika.commands")

JOURNAL_FILE: Final = "commands.db"
MAX_QUEUED_PER_DEVICE: Final = 100
MAX_COMMAND_CHARS: Final = 1024
CODECS: Final = (CODEC_12, CODEC_14)
# Codec 14 packs the IMEI into 8 bytes of hex nibbles.
MAX_CODEC14_IMEI: Final = 16
# How often commands queued for devices that stay away are checked for their TTL.
SWEEP_INTERVAL_S: Final = 60.0
# The API waits this much longer than the device may take, so a command sent at once
# reaches its final state before the request gives up.
WAIT_MARGIN_S: Final = 1.0

_T = TypeVar("_T")


class CommandLink(Protocol):
    """What a connected session offers the center: a nudge to look at its queue."""

    def wake(self) -> None:
        """There is a command to send (the session sends it when the device is free)."""


class CommandCenter:
    """The queues and states of every device command of this process."""

    def __init__(
        self,
        settings: TeltonikaConfig,
        data_dir: str | Path,
        *,
        alone: bool = True,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        # False with workers > 1: a device not connected here may be connected elsewhere.
        self.alone = alone
        self.clock = clock
        self.journal = CommandJournal(Path(data_dir) / JOURNAL_FILE)
        self._queues: dict[str, deque[Command]] = {}
        self._links: dict[str, CommandLink] = {}
        self._done: dict[int, asyncio.Event] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="teltonika-commands")
        await self._run(self.journal.open)
        queued, lost = await self._run(self.journal.recover, self.clock())
        for command in queued:
            self._queues.setdefault(command.device_id, deque()).append(command)
        if queued or lost:
            log.info(
                "teltonika commands: %d queued for their devices; %d sent before the stop "
                "marked timed out",
                len(queued),
                lost,
            )
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(), name="teltonika-command-sweep"
        )

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for event in self._done.values():
            event.set()
        if self._executor is not None:
            await self._run(self.journal.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None, "start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _save(self, command: Command) -> None:
        """Write the command's state behind the caller's back (in order, on the disk thread)."""
        if self._executor is None:
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self.journal.update, command.row()
        )
        future.add_done_callback(_log_failed_write)

    # -- the API's side (fleetgate.runtime.DeviceCommands) ---------------------------------
    async def submit(
        self, device_id: str, command: str, *, codec: int = CODEC_12, wait_s: float | None = None
    ) -> dict[str, Any]:
        _check(device_id, command, codec)
        if device_id not in self._links and not self.alone:
            raise CommandRefusedError(
                "device_not_here",
                f"device {device_id} is not connected to the worker serving the API; with "
                "workers > 1, commands reach only the devices connected to worker 0 unless "
                "teltonika.command_routing (Redis) routes them to the worker holding it",
                503,
            )
        queue = self._queues.get(device_id)
        if queue is not None and len(queue) >= MAX_QUEUED_PER_DEVICE:
            raise CommandRefusedError(
                "too_many_queued",
                f"device {device_id} already has {len(queue)} commands queued",
                429,
            )
        item = Command(0, device_id, command, codec, QUEUED, self.clock())
        item.id = await self._run(self.journal.insert, item)
        self._queues.setdefault(device_id, deque()).append(item)
        metrics.labelled(metrics.TELTONIKA_COMMANDS, QUEUED).inc()
        link = self._links.get(device_id)
        if link is None:
            # Offline: delivered on the device's next connection.
            return item.as_json()
        self._done.setdefault(item.id, asyncio.Event())
        link.wake()
        await self._wait_done(item.id, wait_s)
        return item.as_json()

    async def _wait_done(self, command_id: int, wait_s: float | None) -> None:
        """Wait for the command's final state, at most ``wait_s`` (default: the device's
        answer timeout and a margin); still queued or sent, the caller gets it as it is."""
        done = self._done.setdefault(command_id, asyncio.Event())
        wait = self.settings.command_timeout_s + WAIT_MARGIN_S if wait_s is None else wait_s
        try:
            await asyncio.wait_for(done.wait(), wait)
        except TimeoutError:
            pass
        finally:
            self._done.pop(command_id, None)

    async def history(self, device_id: str, limit: int) -> list[dict[str, Any]]:
        return [item.as_json() for item in await self._run(self.journal.history, device_id, limit)]

    async def get(self, device_id: str, command_id: int) -> dict[str, Any] | None:
        item = await self._run(self.journal.get, device_id, command_id)
        return None if item is None else item.as_json()

    # -- the session's side --------------------------------------------------------------
    def attach(self, device_id: str, link: CommandLink) -> None:
        """The device is connected through ``link`` (a reconnect replaces the old one)."""
        self._links[device_id] = link
        if self._queues.get(device_id):
            link.wake()

    def detach(self, device_id: str, link: CommandLink) -> None:
        if self._links.get(device_id) is link:
            del self._links[device_id]

    def connected(self, device_id: str) -> bool:
        return device_id in self._links

    def take(self, device_id: str) -> Command | None:
        """The next command to send to the device, or None; expired ones are finished."""
        queue = self._queues.get(device_id)
        if queue is None:
            return None  # the common case: asked after every frame
        while queue:
            item = queue.popleft()
            if self._expired(item):
                self._finish(item, TIMED_OUT, detail=self._ttl_detail())
                continue
            if not queue:
                del self._queues[device_id]
            return item
        del self._queues[device_id]
        return None

    def sent(self, item: Command) -> None:
        item.status = SENT
        item.sent_at = self.clock()
        metrics.labelled(metrics.TELTONIKA_COMMANDS, SENT).inc()
        self._save(item)

    def answered(self, item: Command, response: str) -> None:
        self._finish(item, ANSWERED, response=response)

    def nacked(self, item: Command) -> None:
        self._finish(item, NACK, detail="the device refused it: the IMEI is not its own")

    def timed_out(self, item: Command, detail: str) -> None:
        self._finish(item, TIMED_OUT, detail=detail)

    def _finish(
        self, item: Command, status: str, *, response: str | None = None, detail: str | None = None
    ) -> None:
        item.status = status
        item.response = response
        item.detail = detail
        item.finished_at = self.clock()
        metrics.labelled(metrics.TELTONIKA_COMMANDS, status).inc()
        self._save(item)
        self._finished(item)
        log.info(
            "teltonika command %s",
            status,
            extra=fields(imei=item.device_id, id=item.id, command=item.command, detail=detail),
        )

    def _finished(self, item: Command) -> None:
        """Wake the request waiting for ``item``'s answer (its state is saved in order)."""
        done = self._done.get(item.id)
        if done is not None:
            done.set()

    # -- queued too long ---------------------------------------------------------------
    def _expired(self, item: Command) -> bool:
        return self.clock() - item.created_at > self.settings.command_queue_ttl_s * 1000

    def _ttl_detail(self) -> str:
        return f"not delivered within command_queue_ttl_s ({self.settings.command_queue_ttl_s:g} s)"

    def sweep(self) -> None:
        """Finish the queued commands past their TTL (devices that stayed away)."""
        for device_id in list(self._queues):
            queue = self._queues[device_id]
            while queue and self._expired(queue[0]):
                self._finish(queue.popleft(), TIMED_OUT, detail=self._ttl_detail())
            if not queue:
                del self._queues[device_id]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep()


def _check(device_id: str, command: str, codec: int) -> None:
    """Refuse (400) what cannot be sent: a device id that is not an IMEI, a command that is
    not printable ASCII, a codec that carries no commands."""
    if codec not in CODECS:
        raise CommandRefusedError(
            "invalid_codec", f"codec {codec}: commands use codec 12 or 14", 400
        )
    longest = MAX_CODEC14_IMEI if codec == CODEC_14 else IMEI_MAX_LENGTH
    if not (device_id.isdigit() and device_id.isascii() and len(device_id) <= longest):
        raise CommandRefusedError(
            "invalid_device", f"{device_id[:40]!r} is not an IMEI (1..{longest} digits)", 400
        )
    if not command or len(command) > MAX_COMMAND_CHARS:
        raise CommandRefusedError(
            "invalid_command", f"a command is 1..{MAX_COMMAND_CHARS} characters", 400
        )
    if not (command.isascii() and command.isprintable()):
        raise CommandRefusedError(
            "invalid_command", "a command is printable ASCII text (such as getinfo)", 400
        )


def _log_failed_write(future: asyncio.Future[None]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.error("teltonika commands: writing a command's state failed", exc_info=error)
