"""Child processes that end with their parent, even when the parent is killed with SIGKILL.

Workers of the supervisor and the servers fleetgate starts itself (the embedded mosquitto)
must not outlive it: an orphan keeps its port and its files. On Linux the kernel sends the
child a signal the moment its parent exits (``PR_SET_PDEATHSIG``); elsewhere nothing
happens here and the caller's own checks must do.

The signal follows the *thread* that started the child, so start children from a
long-lived thread (the event loop's).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
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
