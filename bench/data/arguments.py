"""The data root, the checksum switch and the ``data`` command's arguments, without torch: the
CLI parser (``python -m bench --help``) builds them before any scenario is imported;
:func:`bench.data.real.cmd_data` runs the command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
VERIFY_ENV = "BENCH_VERIFY_CHECKSUMS"
DEFAULT_DATA_ROOT = Path("data")


def data_root(explicit: str | Path | None = None) -> Path:
    """The data root: ``explicit``, else ``$BENCH_DATA_ROOT``, else ``./data``."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(DATA_ROOT_ENV)
    return (Path(env).expanduser() if env else DEFAULT_DATA_ROOT).absolute()


def verify_checksums() -> bool:
    """Whether published checksums are enforced (``BENCH_VERIFY_CHECKSUMS``, default on)."""
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-root`` and ``--no-verify`` (for ``run`` and ``data``)."""
    parser.add_argument("--data-root", default=None,
                        help=f"folder holding the real datasets (default ${DATA_ROOT_ENV} or "
                             "./data)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not enforce published checksums (e.g. a re-packed release)")


def apply_data_arguments(args: argparse.Namespace) -> None:
    """Export ``--data-root`` / ``--no-verify`` to the environment (inherited by workers)."""
    if getattr(args, "data_root", None):
        os.environ[DATA_ROOT_ENV] = str(Path(args.data_root).expanduser())
    if getattr(args, "no_verify", False):
        os.environ[VERIFY_ENV] = "0"


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``python -m bench data check|download|list [NAME]``; the caller sets its
    ``func`` (:func:`bench.data.real.cmd_data`)."""
    p = subparsers.add_parser(
        "data", help="check or download the papers' real datasets",
        description="check: verify the layout (and published checksums) of a dataset and list "
                    "what is missing; download: fetch it where a public URL exists "
                    "(resumable, checksum-verified); list: the real-dataset scenarios.")
    p.add_argument("action", choices=["check", "download", "list"])
    p.add_argument("name", nargs="?", help="scenario name, e.g. medmnist_mola")
    add_data_arguments(p)
    return p
