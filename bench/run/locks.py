"""Atomic lock files: a run is claimed before it is trained, so that two sweeps on one results
folder never run it twice.

A lock is created complete with ``os.link`` (which fails when the lock exists) and names its
owner (host, pid, process start time). A lock whose process is gone (same host, dead pid or a
reused pid with another start time) is taken over. Whoever holds a run's lock removes the
temporary files an interrupted write of that record left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, dead but not reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
    except (OSError, ValueError):
        return True


def _start_time(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), "" when unknown: told apart
    from a later process that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return ""


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}".strip()


#: an unreadable lock (not written by this module, which creates it complete) is stale after this
GARBLED_LOCK_GRACE_S = 10.0


def _is_stale(content: str, lock: Path) -> bool:
    parts = content.split()
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        try:
            return time.time() - lock.stat().st_mtime > GARBLED_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return False  # another machine's process: cannot be checked from here
    if not _pid_alive(pid):
        return True
    started = parts[2] if len(parts) == 3 else ""
    return bool(started) and started != _start_time(pid)


def claim(lock: Path) -> bool:
    """Atomically create ``lock`` naming this process; take it over when its owner is dead.

    The lock is written to a private file first and hard-linked into place, so it never exists
    half-written. A stale lock is first renamed to a private name (only one taker succeeds); if
    what was renamed is no longer the stale lock (another process took it over in between), it
    is put back and the claim fails.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = _lock_owner()
    mine = lock.with_name(f"{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        mine.write_text(me)
        for _ in range(3):
            try:
                os.link(mine, lock)
                return True
            except FileExistsError:
                pass
            try:
                content = lock.read_text()
            except FileNotFoundError:
                continue  # released in between: try again
            if not _is_stale(content, lock):
                return False
            tomb = lock.with_name(f"{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
            try:
                os.rename(lock, tomb)
            except FileNotFoundError:
                continue
            if tomb.read_text() != content:  # a fresh lock was taken: give it back
                with contextlib.suppress(FileExistsError):
                    os.link(tomb, lock)
                tomb.unlink()
                return False
            tomb.unlink()
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            mine.unlink()


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    try:
        if lock.read_text() == _lock_owner():
            os.unlink(lock)
    except FileNotFoundError:
        pass


def remove_orphan_temp_files(path: Path) -> None:
    """Temporary files of ``path`` left by an interrupted write (the caller holds the lock), and
    lock candidates (``<lock>.<pid>.<id>.new|stale``) of dead processes."""
    orphans = list(path.parent.glob(f".{path.name}.*.tmp"))
    for pattern in (f"{path.name}.lock.*.new", f"{path.name}.lock.*.stale"):
        for cand in path.parent.glob(pattern):
            pid = cand.name[len(path.name) + len(".lock."):].split(".")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                orphans.append(cand)
    for tmp in orphans:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
