"""timm-style registries: ``register`` / ``create`` / ``list`` with glob patterns.

Plugins are plain ``.py`` files in the repository's ``methods/`` and ``datasets/`` folders
(shipped inside an installed distribution as ``bench/methods`` and ``bench/datasets``), in extra
folders named by ``$BENCH_PLUGIN_PATH``, plus anything registered through the entry-point groups
``mtl_bench.methods`` and ``mtl_bench.scenarios``. Plugin files are imported under a private
module prefix (``bench_plugins.<folder>.<file>``), so the repository's ``datasets/`` folder never
claims the import name ``datasets`` (the Hugging Face library keeps it).

This module imports no other module of ``bench``: every stage may use the registries.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FOLDERS = ("methods", "datasets")
ENTRY_POINT_GROUPS = ("mtl_bench.methods", "mtl_bench.scenarios")
PLUGIN_PATH_ENV = "BENCH_PLUGIN_PATH"


class UnknownNameError(KeyError):
    """A name that no registry entry has; the message names the nearest valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    source: str = ""


@dataclass
class Registry(Generic[T]):
    """A named collection of factories, in the spirit of ``timm.models._registry``."""

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)

    def register(
        self, name: str | None = None, *, description: str | None = None
    ) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name", description="...")``."""

        def deco(obj: T) -> T:
            key = (name or getattr(obj, "__name__", "")).lower()
            if not key:
                raise ValueError(f"{self.kind}: cannot register an object without a name")
            desc = description
            if desc is None:
                desc = (getattr(obj, "description", None) or _first_line(obj.__doc__)) or ""
            existing = self.entries.get(key)
            source = getattr(obj, "__module__", "") or ""
            if existing is not None and existing.source != source:
                raise ValueError(
                    f"{self.kind} {key!r} is registered twice ({existing.source} and {source}); "
                    "rename one of them"
                )
            self.entries[key] = Entry(key, obj, desc, source)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "") -> T:
        return self.register(name, description=description)(obj)

    def get(self, name: str) -> T:
        load_plugins()
        key = name.lower()
        if key not in self.entries:
            raise UnknownNameError(self.unknown_message(name))
        return self.entries[key].obj

    def unknown_message(self, name: str) -> str:
        names = sorted(self.entries)
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid names: {', '.join(names)}"
        return f"unknown {self.kind} {name!r}; {hint} (see `python -m bench list {self.kind}s`)"

    def create(self, name: str, **kwargs: Any) -> Any:
        obj = self.get(name)
        return obj(**kwargs) if callable(obj) else obj

    def list(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """Names matching a glob pattern (``mola*``), or containing a plain one (``mola``)."""
        load_plugins()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return sorted(n for n in self.entries if any(_matches(n, p.lower()) for p in patterns))

    def describe(self, name: str) -> str:
        self.get(name)
        return self.entries[name.lower()].description

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return isinstance(name, str) and name.lower() in self.entries


def _matches(name: str, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(name, pattern)
    return pattern in name


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


_LOADED: set[Path] = set()
_ENTRY_POINTS_LOADED = False


def builtin_plugin_dirs() -> list[Path]:
    """The built-in ``methods/`` and ``datasets/`` folders: inside the installed package
    (``bench/methods``, ``bench/datasets`` in a wheel), else beside it in a source checkout."""
    package = Path(__file__).resolve().parent
    dirs = []
    for folder in PLUGIN_FOLDERS:
        if (package / folder).is_dir():
            dirs.append(package / folder)
        elif (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / folder).is_dir():
            dirs.append(REPO_ROOT / folder)
    return dirs


def plugin_dirs() -> list[Path]:
    """Where plugin files are loaded from: the built-in folders, then ``$BENCH_PLUGIN_PATH``."""
    dirs = builtin_plugin_dirs()
    extra = os.environ.get(PLUGIN_PATH_ENV, "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def load_plugin_dir(folder: Path) -> None:
    """Import every ``*.py`` file of ``folder`` (not starting with ``_``) once, in name order."""
    folder = folder.resolve()
    if folder in _LOADED or not folder.is_dir():
        return
    _LOADED.add(folder)
    prefix = f"bench_plugins.{folder.name}_{abs(hash(str(folder))) % 10**8}"
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod_name = f"{prefix}.{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise


def load_plugins() -> None:
    """Load the plugin folders and the entry points (idempotent, cheap after the first call)."""
    global _ENTRY_POINTS_LOADED
    for folder in plugin_dirs():
        load_plugin_dir(folder)
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for group in ENTRY_POINT_GROUPS:
            for ep in importlib.metadata.entry_points(group=group):
                ep.load()


# The registries. Plugins import these through ``bench.api``.
methods: Registry[Any] = Registry("method")
architectures: Registry[Any] = Registry("architecture")
weightings: Registry[Any] = Registry("weighting")
scenarios: Registry[Any] = Registry("scenario")
