"""A sweep's progress in a log (``bench.run.progress``): lines at most once a minute, with
the runs done, the share, the time elapsed and left; none for a short sweep."""

from __future__ import annotations

import io

from bench.run.progress import LogProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_most_once_a_minute_with_the_time_left() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(total=10, initial=2, file=out, every_s=60.0, clock=clock)
    clock.now += 30
    bar.update()  # 3/10 after 30 s: too early for a line
    assert out.getvalue() == ""
    clock.now += 30
    bar.set_postfix_str("hps/digits_tasks failures=0")
    bar.update()  # 4/10 after 60 s: 2 runs in 1 min, 6 left
    assert out.getvalue() == ("progress: 4/10 runs (40 %), 1.0 min, ~3.0 min left "
                              "(last: hps/digits_tasks failures=0)\n")
    clock.now += 10
    bar.update()  # 10 s after the last line: nothing
    assert out.getvalue().count("\n") == 1


def test_a_short_sweep_prints_nothing_and_the_last_run_no_line() -> None:
    out, clock = io.StringIO(), Clock()
    bar = LogProgress(total=3, file=out, every_s=60.0, clock=clock)
    bar.update()
    bar.update()
    clock.now += 120
    bar.update()  # the last run: the sweep's "done in" line follows
    bar.close()
    assert out.getvalue() == ""


def test_messages_go_out_at_once_and_a_log_gets_lines_not_a_bar() -> None:
    out = io.StringIO()
    bar = progress_bar(5, 0, file=out)
    assert isinstance(bar, LogProgress)
    bar.write("FAILED hps on digits_tasks seed 0: boom")
    assert out.getvalue() == "FAILED hps on digits_tasks seed 0: boom\n"
