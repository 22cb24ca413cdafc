"""Child processes that do not outlive the process that started them."""
from __future__ import annotations

import ctypes
import signal
import sys

try:  # Linux: ask the kernel to SIGTERM the child when the parent dies, even by SIGKILL
    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
except OSError:  # pragma: no cover
    _libc = None


def die_with_parent() -> None:
    """preexec_fn for child processes: SIGTERM when the parent goes away (Linux only)."""
    if _libc is not None and sys.platform.startswith("linux"):
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
