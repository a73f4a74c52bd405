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

from bench.records.schema import record_problem

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
    """``None`` when ``record`` is a well-formed record (:mod:`bench.records.schema`), else one
    line saying what is wrong with it."""
    return record_problem(record)


@dataclass
class BadRecord:
    path: Path
    problem: str


def iter_record_files(results_dir: Path) -> Iterator[Path]:
    root = Path(results_dir)
    if root.is_dir():
        yield from sorted(p for p in root.rglob("*.json")
                          if not any(part.startswith(".") for part in p.relative_to(root).parts))


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a valid run record at ``path``; ``(None, problem)`` when the file
    exists but is unreadable or does not match the schema; ``(None, None)`` when it is absent
    (or is not a run record)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"unreadable ({err.__class__.__name__}: {err})"
    try:
        record = json.loads(text)
    except ValueError as err:
        return None, f"unreadable JSON ({err.__class__.__name__}: {err})"
    if isinstance(record, dict) and record.get("kind", "run") != "run":
        return None, None
    problem = validate(record)
    return (None, problem) if problem else (record, None)


def load_records(results_dir: Path) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """All valid records under ``results_dir`` (sorted by path) and the invalid ones."""
    good: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    for path in iter_record_files(results_dir):
        record, problem = read_record(path)
        if problem:
            bad.append(BadRecord(path, problem))
        elif record is not None:
            record["_path"] = str(path)
            good.append(record)
    return good, bad


def find_record(results_dir: Path, profile: str, scenario: str, label: str, seed: int,
                config_hash: str) -> dict[str, Any] | None:
    """The valid record of this run (any status), or None."""
    record, _ = read_record(record_path(results_dir, profile, scenario, label, seed,
                                        config_hash))
    return record if record is not None and record["config_hash"] == config_hash else None
