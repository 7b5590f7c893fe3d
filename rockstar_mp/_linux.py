"""Linux process helpers shared by the worker and the aggregator."""
from __future__ import annotations

import ctypes

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` when our parent exits (even by SIGKILL). False if unsupported.

    The caller must then check ``os.getppid()``: a parent that died before this call is not signalled.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
