"""Long-lived local worker processes: each imports torch and the registries once, then takes
one item at a time until the work is done.

The parent hands every worker one item at a time over its own pipe, so it always knows which
item each worker holds. A worker that dies (``kill -9``, the out-of-memory killer) loses only
that item: ``on_lost`` turns it into a result, a new worker takes the worker's place while work
remains, and the other workers go on. Closing the :func:`serve` generator (the sweep ends,
Ctrl-C, SIGTERM turned into :class:`Terminated`) stops the workers: SIGTERM, which a worker turns
into ``SystemExit`` (its run releases its lock and writes nothing), then SIGKILL after
:data:`STOP_GRACE_S`.

Workers are forked by a ``forkserver`` (``spawn`` where there is none), never ``fork`` of a
parent whose torch threads may be running. The fork server imports the ``preload`` modules
(torch, the engine) once; :func:`warm_up` starts it early, so that it imports them while the
sweep is still planning. Workers ask the kernel for SIGTERM when their parent dies (Linux
``PR_SET_PDEATHSIG``; the fork server ends with the sweep), so a sweep killed with ``kill -9``
leaves no worker training either.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: how long stopped workers get to release their locks before they are killed
STOP_GRACE_S = 10.0
#: workers that die before taking any item, in a row, before the sweep gives up
MAX_START_FAILURES = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled like Ctrl-C (the runs in flight are stopped and write nothing),
    reported as such (exit code 143)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere, or
    where signals cannot be set, nothing changes)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # died before prctl took effect
        raise SystemExit(0)


def context(preload: Sequence[str] = ()) -> Any:
    """The ``forkserver`` multiprocessing context, its server importing ``preload`` (set only
    before it starts), or ``spawn`` where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def warm_up(preload: Sequence[str]) -> None:
    """Start the fork server now (it imports ``preload`` meanwhile): call it before the slow
    part of a sweep's start (planning) so that the workers start at once afterwards."""
    if context(preload).get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


#: what a sweep's workers import before their first run (absent ones are passed over); this
#: module imports only the standard library, so that ``run`` starts the fork server first thing.
#: torchvision, timm and torchjd are not among them: the runs that need them import them (a
#: worker once), and a sweep without them starts ~2.4 s sooner
SWEEP_PRELOAD = ("torch", "bench.run.engine", "bench.run.worker", "bench.run.sweep",
                 "bench.run.pool", "bench.run.plugins_preload")


def _serve_worker(conn: multiprocessing.connection.Connection, task: Callable[[Any], Any],
                  initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    """A worker's life: initialize, say ``ready``, then ``task(item)`` for each item received
    until ``None`` or the parent's end closes."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _die_with_parent()
        if initializer is not None:
            initializer(*initargs)
        conn.send(("ready", os.getpid()))
        while True:
            try:
                item = conn.recv()
            except EOFError:  # the parent is gone
                return
            if item is None:
                return
            try:
                reply: tuple[str, Any] = ("done", task(item))
            except Exception as err:  # noqa: BLE001 - reported to the parent as a lost item
                traceback.print_exc()
                reply = ("error", f"{type(err).__name__}: {err}")
            conn.send(reply)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: stop quietly
        return
    except BrokenPipeError:  # the parent is gone
        return


@dataclass
class _Worker(Generic[T]):
    process: Any
    conn: multiprocessing.connection.Connection
    item: T | None = None
    started_at: float = 0.0  # time.time() when the item was handed over
    clock: float = 0.0  # time.perf_counter() then
    ready: bool = False


def describe_exit(code: int | None) -> str:
    """``killed by SIGKILL`` for a negative exit code, else ``exit code N``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def serve(items: list[T], task: Callable[[T], Any], workers: int,
          on_lost: Callable[[T, str, float, float], Any],
          initializer: Callable[..., None] | None = None,
          initargs: tuple[Any, ...] = (), preload: Sequence[str] = ()) -> Iterator[Any]:
    """Yield ``task(item)`` for every item, computed by ``workers`` long-lived processes
    (:func:`context`), in the order they finish.

    ``task`` and ``initializer`` must be importable (module-level) functions; the workers get
    the environment of the fork server (pass what matters in ``initargs``). An item whose
    worker died or whose ``task`` raised yields ``on_lost(item, error, started_at, seconds)``
    (called in this process; ``started_at`` is the ``time.time()`` the item was handed over).
    Close the generator (``contextlib.closing``) to stop the workers early.
    """
    ctx = context(preload)
    queue = collections.deque(items)
    pool: list[_Worker[T]] = []
    start_failures = 0

    def start() -> None:
        here, there = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_serve_worker, name="bench-worker",
                              args=(there, task, initializer, initargs))
        process.start()
        there.close()
        pool.append(_Worker(process, here))

    def hand_next(worker: _Worker[T]) -> None:
        if not queue:
            worker.item = None
            return
        item = queue.popleft()
        try:
            worker.conn.send(item)
        except (BrokenPipeError, OSError):  # it died meanwhile: the item was never started
            queue.appendleft(item)
            worker.item = None
            return
        worker.item, worker.started_at, worker.clock = item, time.time(), time.perf_counter()

    def lost(worker: _Worker[T], error: str) -> Any:
        item = worker.item
        worker.item = None
        assert item is not None
        return on_lost(item, error, worker.started_at, time.perf_counter() - worker.clock)

    try:
        for _ in range(min(workers, len(queue))):
            start()
        while pool:
            ready = multiprocessing.connection.wait(
                [w.conn for w in pool] + [w.process.sentinel for w in pool])
            for worker in list(pool):
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                message: tuple[str, Any] | None = None
                if worker.conn.poll():
                    with contextlib.suppress(EOFError, OSError):
                        message = worker.conn.recv()
                if message is None:
                    if worker.process.is_alive() and worker.conn not in ready:
                        continue  # not a message, not yet gone: wait again
                    worker.process.join()
                    pool.remove(worker)
                    worker.conn.close()
                    why = describe_exit(worker.process.exitcode)
                    if worker.item is not None:
                        yield lost(worker, f"local worker process {worker.process.pid} died "
                                           f"in this run ({why}: e.g. kill -9 or out of memory)")
                    elif not worker.ready:
                        start_failures += 1
                        if start_failures >= MAX_START_FAILURES:
                            raise RuntimeError(f"local worker processes could not start "
                                               f"({MAX_START_FAILURES} in a row, last: {why})")
                    if queue:
                        start()
                    continue
                kind, value = message
                if kind == "ready":
                    worker.ready = True
                    start_failures = 0
                elif kind == "done":
                    worker.item = None
                    yield value
                else:  # "error": the task raised (outside what it records itself)
                    yield lost(worker, f"the worker raised {value}")
                hand_next(worker)
                if worker.item is None:  # no work left for it
                    with contextlib.suppress(BrokenPipeError, OSError):
                        worker.conn.send(None)
    finally:
        _stop(pool)


def _stop(pool: list[_Worker[Any]]) -> None:
    """End the workers still alive: SIGTERM (a run in flight releases its lock and writes
    nothing), then SIGKILL for those still alive after :data:`STOP_GRACE_S`."""
    for worker in pool:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in pool:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


__all__ = ["MAX_START_FAILURES", "STOP_GRACE_S", "SWEEP_PRELOAD", "Terminated", "context",
           "describe_exit", "serve", "sigterm_raises", "warm_up"]
