"""Imported once by a sweep's fork server (:data:`bench.run.pool.SWEEP_PRELOAD`): the built-in
method and dataset plugins, which depend on no environment variable, so that every worker
forks with them loaded instead of importing them itself (1-2 s per worker on this project's
machine). A worker then loads only the folders of ``$BENCH_PLUGIN_PATH`` it is started with
(:func:`bench.run.sweep._init_worker`)."""

from __future__ import annotations

from bench.registry import builtin_plugin_dirs, load_plugin_dir

for _folder in builtin_plugin_dirs():
    load_plugin_dir(_folder)
