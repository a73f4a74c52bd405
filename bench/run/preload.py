"""Imported once by the fork server of data-parallel runs (:func:`bench.run.parallel.launch`):
the engine and every plugin are loaded there, and each rank forks from it ready to train."""

from __future__ import annotations

import contextlib

import bench.run.engine  # noqa: F401 - the import is the point
from bench.registry import load_plugins

load_plugins()
# a rank started from a joblib/loky worker (``run --jobs N``) inherits the start method name
# "loky", which multiprocessing resolves only once loky has registered its context
with contextlib.suppress(ImportError):
    import joblib.externals.loky.backend.context  # noqa: F401
