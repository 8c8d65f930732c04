"""Child processes that end with their parent, even when the parent is killed with SIGKILL.

Workers of the supervisor and the servers fleetgate starts itself (the embedded mosquitto)
must not outlive it: an orphan keeps its port and its files. On Linux the kernel sends the
child a signal the moment its parent exits (``PR_SET_PDEATHSIG``); elsewhere nothing
happens here and the caller's own checks must do.

The signal follows the *thread* that started the child, not its process: a child started
from a short-lived thread (``asyncio.to_thread``, an executor that a closing event loop shuts
down) is signalled when that thread ends. Start children from a long-lived thread (the
event loop's), or through :func:`popen_ending_with_parent`, which forks on a thread that
lives as long as the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def _find_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once, here: between fork and exec (``preexec_fn``) only the call itself runs,
# no dynamic loading.
_prctl = _find_prctl()


def signal_on_parent_death(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send ``signum`` to this process when its parent exits (Linux).

    :class:`OSError` when the request fails or prctl is missing; nothing on other systems.
    """
    if not sys.platform.startswith("linux"):
        return
    if _prctl is None:
        raise OSError("prctl is not available")
    if _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def end_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when its parent exits. Failures are
    ignored there (nothing can be logged between fork and exec); the child then outlives
    a killed parent, as without this."""
    with contextlib.suppress(OSError):
        signal_on_parent_death()


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawner_thread() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            # Never shut down: its one thread lives until the interpreter exits, so the
            # kernel ties the children to the process, not to whichever thread asked.
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetgate-spawner")
        return _spawner


def popen_ending_with_parent(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` whose child gets SIGTERM when this process exits, from any thread."""

    def spawn() -> subprocess.Popen[bytes]:
        # Safe with threads: the preexec call is one prctl(2), looked up before the fork.
        return subprocess.Popen(argv, preexec_fn=end_with_parent, **kwargs)  # noqa: PLW1509

    return _spawner_thread().submit(spawn).result()
