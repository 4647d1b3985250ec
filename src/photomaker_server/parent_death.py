"""Child processes that die with their parent: a worker or an API process of ``photomaker serve`` whose parent was
killed must not hold the GPU or the port next to those of a restarted server.

Linux's ``PR_SET_PDEATHSIG`` makes the kernel signal the child when its parent goes; a cheap thread watching
``os.getppid()`` covers other systems and a signal that was missed. Torch-free and web-free: both the worker and the
API's child processes use it before their heavy imports.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["PARENT_POLL_S", "set_parent_death_signal", "watch_parent"]

#: ``prctl`` option number (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: How often the fallback thread checks that the parent is still there.
PARENT_POLL_S = 0.5


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent exits. False where unsupported.

    Caveat: the kernel tracks the parent *thread* that forked us, so the parent must spawn workers from a thread
    that lives as long as it does (the supervisor's main thread or its watch thread, which ends only at shutdown).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent_pid: int, on_orphaned: Callable[[], None], interval_s: float = PARENT_POLL_S) -> threading.Thread:
    """Call ``on_orphaned`` (once) when this process's parent is no longer ``parent_pid`` (it died; we were
    re-parented to init or a subreaper)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_orphaned()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
