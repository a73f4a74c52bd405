"""Stage 4 — records: the only interface between running and reporting.

One self-describing JSON file per run, written atomically (:mod:`~bench.records.store`).
Running writes them; reporting reads them and nothing else.

May import: the standard library and this package only (no torch, no other ``bench`` stage),
so that records can be read anywhere (``tests/test_layout.py`` checks it).
"""

from bench.records.store import (
    REQUIRED_KEYS,
    STATUSES,
    BadRecord,
    find_record,
    iter_record_files,
    load_records,
    record_path,
    safe_name,
    validate,
    write_json_atomic,
)

__all__ = ["REQUIRED_KEYS", "STATUSES", "BadRecord", "find_record", "iter_record_files",
           "load_records", "record_path", "safe_name", "validate", "write_json_atomic"]
