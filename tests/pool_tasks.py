"""Tasks for the local worker pool's tests (:mod:`bench.run.pool`): importable by name in the
``spawn`` workers, and free of torch so that the workers start in a fraction of a second."""

from __future__ import annotations

import os
import signal


def whoami(item: object) -> tuple[object, int]:
    """``(item, pid of the worker)``; the item ``"die"`` SIGKILLs its worker instead, and
    ``"raise"`` raises."""
    if item == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if item == "raise":
        raise ValueError("asked to raise")
    return item, os.getpid()
