"""Fault injection for tests: ``ATTVIZ_FAULT=<stage>[@<n>][:enospc]`` stops a process at a stage.

:func:`fault_point` is called where a writer passes a stage (a document written, the table, the tokens,
consolidation, the rename, ...). When the environment variable names that stage, the process kills
itself with SIGKILL there (as a power cut or the OOM killer would), or with ``:enospc`` raises
``OSError(ENOSPC)`` (a full disk); ``@n`` picks the n-th time the stage is reached (default: the first).
Several faults may be given, separated by commas. Unset, a fault point costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

VARIABLE = "ATTVIZ_FAULT"
_counts: dict[str, int] = {}


def fault_point(stage: str) -> None:
    """Die (SIGKILL) or raise ENOSPC here when ``$ATTVIZ_FAULT`` names ``stage``; else nothing."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition(":")
        name, _, nth = name.partition("@")
        if name != stage:
            continue
        count = _counts[stage] = _counts.get(stage, 0) + 1
        if count != int(nth or 1):
            continue
        if action == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {stage})")
        os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Forget how often each stage was reached (tests that inject faults in-process)."""
    _counts.clear()
