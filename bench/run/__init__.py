"""Stage 3 — run: from a request to records.

* :mod:`~bench.run.plan` — expands ``--all`` / ``--method`` / ``--scenario`` / ``--seeds`` /
  ``--ablation`` into :class:`~bench.run.plan.RunSpec` s: each run resolved **once** into a frozen
  description (method spec with its resolved keywords, training setup) and the config it
  serialises to (its SHA-256 is the run's identity).
* :mod:`~bench.run.ablations` — the papers' ablation presets.
* :mod:`~bench.run.engine` — one run: build the model, train, select the epoch, evaluate.
* :mod:`~bench.run.precision` — mixed precision (autocast, fp16's gradient scaler), the device.
* :mod:`~bench.run.parallel` — data parallelism: one run on N processes (torch.distributed).
* :mod:`~bench.run.worker` — one run in a worker: claim, train, write the record.
* :mod:`~bench.run.locks` — atomic lock files that let sweeps share a results folder.
* :mod:`~bench.run.sweep` — executes a plan locally or on a backend; skips done runs.
* :mod:`~bench.run.pool` — long-lived local worker processes (a killed one fails its run only).
* :mod:`~bench.run.backends` — Dask, Ray and Slurm (submitit) backends.
* :mod:`~bench.run.cost` — counted FLOPs of a run (``--dry-run``'s estimate).

May import: :mod:`bench.data`, :mod:`bench.models`, :mod:`bench.records`, :mod:`bench.registry`
and this package — never ``bench.report`` (``tests/test_layout.py`` checks it).
"""
