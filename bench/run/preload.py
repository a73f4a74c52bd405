"""Imported once by the fork server of data-parallel runs (:func:`bench.run.parallel.launch`):
the engine and every plugin are loaded there, and each rank forks from it ready to train."""

from __future__ import annotations

import bench.run.engine  # noqa: F401 - the import is the point
from bench.registry import load_plugins

load_plugins()
