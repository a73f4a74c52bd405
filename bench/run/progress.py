"""A sweep's progress: a ``tqdm`` bar on a terminal, plain lines in a log.

``tqdm`` draws nothing when stderr is not a terminal (``nohup ... > log``, Slurm, CI), so a long
sweep written to a log said nothing between its plan and its end. :class:`LogProgress` prints
one line at most every :data:`LOG_EVERY_S` seconds instead — runs finished, the share, the time
elapsed and a naive estimate of the time left — and nothing for a sweep shorter than that (its
``done in`` line says it all). Both have the four methods the sweep uses: ``update``,
``set_postfix_str``, ``write`` and ``close``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: the least time between two lines of :class:`LogProgress`
LOG_EVERY_S = 60.0


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class LogProgress:
    """Progress lines for a log: ``progress: 47/150 runs (31 %), 6.8 min, ~15.0 min left
    (last: hps/digits_tasks)``; ``initial`` runs were done before the sweep started and do not
    count towards the rate."""

    def __init__(self, total: int, initial: int = 0, file: TextIO | None = None,
                 every_s: float = LOG_EVERY_S, clock: Any = time.monotonic) -> None:
        self.total, self.initial, self.n = total, initial, initial
        self.file = file if file is not None else sys.stderr
        self.every_s, self.clock = every_s, clock
        self.start = self.last = clock()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every_s and self.n < self.total:
            self.last = now
            self.file.write(self.line(now) + "\n")
            self.file.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.start
        done = self.n - self.initial
        left = (f", ~{_minutes(elapsed / done * (self.total - self.n))} left"
                if done > 0 else "")
        share = 100 * self.n // max(self.total, 1)
        last = f" (last: {self.postfix})" if self.postfix else ""
        return f"progress: {self.n}/{self.total} runs ({share} %), {_minutes(elapsed)}{left}{last}"

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file if file is not None else self.file, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, file: TextIO | None = None) -> Any:
    """A ``tqdm`` bar when ``file`` (default stderr) is a terminal, else :class:`LogProgress`."""
    file = file if file is not None else sys.stderr
    if file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="run", dynamic_ncols=True, file=file)
    return LogProgress(total, initial, file)
