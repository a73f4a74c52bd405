"""Result records: the only interface between running and reporting.

One JSON file per finished run, written atomically (temp file in the same folder, ``fsync``,
``os.replace``), at ``<results>/<profile>/<scenario>/<label>/seed<k>-<hash12>.json``. Reporting
reads these files and nothing else. This module imports no training code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "method", "scenario", "seed", "profile", "config", "config_hash", "metrics",
    "trainable_params", "total_params", "wall_time_s", "versions", "status",
)
STATUSES = ("ok", "diverged", "failed")
_SAFE = re.compile(r"[^A-Za-z0-9_.+=\-\[\],]")


def safe_name(name: str) -> str:
    return _SAFE.sub("_", name)


def record_path(results_dir: Path, profile: str, scenario: str, label: str, seed: int,
                config_hash: str) -> Path:
    return (Path(results_dir) / safe_name(profile) / safe_name(scenario) / safe_name(label)
            / f"seed{seed}-{config_hash[:12]}.json")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that ``path`` is either absent or complete, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def validate(record: Any) -> str | None:
    """``None`` when ``record`` is a well-formed record, else what is wrong with it."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"missing keys {missing}"
    if record["status"] not in STATUSES:
        return f"unknown status {record['status']!r}"
    if record["status"] == "ok" and not isinstance(record["metrics"].get("test"), dict):
        return "status ok but no test metrics"
    return None


@dataclass
class BadRecord:
    path: Path
    problem: str


def iter_record_files(results_dir: Path) -> Iterator[Path]:
    root = Path(results_dir)
    if root.is_dir():
        yield from sorted(p for p in root.rglob("*.json")
                          if not any(part.startswith(".") for part in p.relative_to(root).parts))


def load_records(results_dir: Path) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """All valid records under ``results_dir`` (sorted by path) and the unreadable ones."""
    good: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    for path in iter_record_files(results_dir):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            bad.append(BadRecord(path, f"unreadable JSON ({err.__class__.__name__}: {err})"))
            continue
        if isinstance(record, dict) and record.get("kind", "run") != "run":
            continue
        problem = validate(record)
        if problem:
            bad.append(BadRecord(path, problem))
        else:
            record["_path"] = str(path)
            good.append(record)
    return good, bad


def find_record(results_dir: Path, profile: str, scenario: str, label: str, seed: int,
                config_hash: str) -> dict[str, Any] | None:
    path = record_path(results_dir, profile, scenario, label, seed, config_hash)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if validate(record) is None and record["config_hash"] == config_hash else None
