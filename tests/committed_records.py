"""Records of the current configs without training, made from the committed ones (test helper).

Tests of record handling (schema, resume, leaderboards) need records whose config hash is the
one a sweep would plan today; the committed records' hashes change whenever a scenario's data
version is bumped. These helpers take a committed record of each seed and give it today's config
and hash — the record's shape, which is what those tests are about, stays real.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.records import record_path
from bench.run.plan import make_run

COMMITTED = Path(__file__).resolve().parents[1] / "results"


def current_records(target: Path, method: str = "hps", scenario: str = "digits_domains",
                    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[Path]:
    """Write records of ``method`` on ``scenario`` for ``seeds`` under ``target`` (a results
    folder), each a committed record (cycling through those committed) with today's config."""
    sources = sorted((COMMITTED / "default" / scenario / method).glob("seed*.json"))
    out = []
    for i, seed in enumerate(seeds):
        run = make_run(method, scenario, seed, "default")
        record = json.loads(sources[i % len(sources)].read_text())
        record.update(seed=seed, config=run.config, config_hash=run.config_hash)
        path = record_path(target, "default", scenario, run.display, seed, run.config_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        out.append(path)
    return out
