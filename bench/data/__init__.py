"""Stage 1 — data: what a scenario is and how its samples are made.

* :mod:`~bench.data.scenario` — the scenario contract (:class:`Scenario`, :class:`TaskSpec`,
  :class:`TrainingSetup`, :class:`ScenarioData`, :class:`Split`, :class:`ScenarioShape`).
* :mod:`~bench.data.metrics` — task losses and metrics (each with its direction).
* :mod:`~bench.data.digits` — helpers of the embedded scenarios (scikit-learn's digits).
* :mod:`~bench.data.real` — real datasets: data root, layout and checksum checks, downloads,
  :class:`RealScenario` / :class:`DomainBedScenario` base classes.
* :mod:`~bench.data.streaming` — samples read from disk batch by batch.
* :mod:`~bench.data.transforms` — the papers' input pipelines (seeded per sample).

The scenario plugins themselves are one file each in the repository's ``datasets/`` folder.

May import: :mod:`bench.registry` and this package only — never ``bench.models``, ``bench.run``,
``bench.records`` or ``bench.report`` (``tests/test_layout.py`` checks it).
"""
