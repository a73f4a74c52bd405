"""Entry point of ``python -m bench``.

Once ``main`` has returned, the process flushes its output, runs the ``atexit`` handlers
(multiprocessing's, which stop a sweep's fork server, among them) and ends with ``os._exit``:
the interpreter's own teardown of the torch stack (freeing every module and cached tensor)
takes 1-3 s on this project's 2-core machine and does nothing a finished command needs
(``python -m bench perf``, start-up and jobs-scaling rows). An exception out of ``main`` ends
the ordinary way, with its traceback; a reader that went away (``python -m bench list | head``)
ends it quietly with exit code 1, as the Python documentation's recipe for SIGPIPE does.
"""

import atexit
import os
import sys

from bench.cli import main


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    atexit._run_exitfuncs()  # what the interpreter would run before its teardown
    os._exit(code)


def _main() -> int:
    try:
        return main()
    except BrokenPipeError:
        # the rest of the output goes nowhere instead of raising again at the flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    _exit_now(_main())
