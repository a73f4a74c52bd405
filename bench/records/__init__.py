"""Stage 4 — records: the only interface between running and reporting.

One self-describing JSON file per run, written atomically (:mod:`~bench.records.store`), valid
against one declared schema (:mod:`~bench.records.schema`). Running writes them; reporting reads
them and nothing else.

May import: the standard library, pydantic and this package only (no torch, no other ``bench``
stage), so that records can be read anywhere (``tests/test_layout.py`` checks it).
"""

from bench.records.schema import STATUSES, record_problem
from bench.records.store import (
    BadRecord,
    find_record,
    iter_record_files,
    load_records,
    read_record,
    record_path,
    safe_name,
    validate,
    write_json_atomic,
)

__all__ = ["STATUSES", "BadRecord", "find_record", "iter_record_files", "load_records",
           "read_record", "record_path", "record_problem", "safe_name", "validate",
           "write_json_atomic"]
