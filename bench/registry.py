"""timm-style registries: ``register`` / ``create`` / ``list`` with glob patterns.

Plugins are plain ``.py`` files in the repository's ``methods/`` and ``datasets/`` folders
(shipped inside an installed distribution as ``bench/methods`` and ``bench/datasets``), in extra
folders named by ``$BENCH_PLUGIN_PATH``, plus anything registered through the entry-point groups
``mtl_bench.methods`` and ``mtl_bench.scenarios``. Plugin files are imported under a private
module prefix (``bench_plugins.<folder>.<file>``), so the repository's ``datasets/`` folder never
claims the import name ``datasets`` (the Hugging Face library keeps it).

Registration is declared, not executed, until an entry is used: the plugin files (and the modules
a registry names, e.g. the backbones') are read with :mod:`ast` (:func:`declarations_in`), and
their literal ``register_*(name, ..., description=...)`` calls and ``@register...("name")``
decorators give ``list``, ``describe`` and ``in`` every name and description without importing
torch; ``get`` imports the one file that declares the name. A file whose registrations cannot be
read that way (a computed name, a registration in a loop or function) is imported whenever the
names are listed, as all files used to be.

This module imports no other module of ``bench``: every stage may use the registries.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
    """A named collection of factories, in the spirit of ``timm.models._registry``.

    ``modules``: modules (besides the plugin files) whose import registers entries; they are
    read for declarations like the plugin files and imported only when one of their entries is
    used."""

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    modules: tuple[str, ...] = ()

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

    def declared(self) -> dict[str, Declaration]:
        """The entries the plugin files and :attr:`modules` declare (read, not imported);
        files whose registrations cannot be read are imported (their entries are then in
        :attr:`entries`)."""
        _load_entry_points()
        found: dict[str, Declaration] = {}
        sources = [*((p, "") for p in plugin_files()), *((None, m) for m in self.modules)]
        for path, module in sources:
            if path is None:
                path = _module_file(module)
                if path is None:
                    continue
            decls, readable = declarations_in(path)
            if not readable:
                _import_source(path, module)
                continue
            for decl in decls:
                if decl.kind != self.kind:
                    continue
                if module:
                    decl = replace(decl, module=module)
                other = found.get(decl.name)
                if other is not None and other.path != decl.path:
                    raise ValueError(f"{self.kind} {decl.name!r} is registered twice ({other.path} "
                                     f"and {decl.path}); rename one of them")
                found[decl.name] = decl
        return found

    def names(self) -> set[str]:
        """Every name: declared ones and registered ones (after the unreadable files ran)."""
        declared = self.declared()
        return set(declared) | set(self.entries)

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self.entries:
            decl = self.declared().get(key)
            if decl is not None:
                decl.load()
            if key not in self.entries:  # not declared readably: import everything
                load_plugins()
                for module in self.modules:
                    importlib.import_module(module)
        if key not in self.entries:
            raise UnknownNameError(self.unknown_message(name))
        return self.entries[key].obj

    def unknown_message(self, name: str) -> str:
        names = sorted(self.names())
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid names: {', '.join(names)}"
        return f"unknown {self.kind} {name!r}; {hint} (see `python -m bench list {self.kind}s`)"

    def create(self, name: str, **kwargs: Any) -> Any:
        obj = self.get(name)
        return obj(**kwargs) if callable(obj) else obj

    def list(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """Names matching a glob pattern (``mola*``), or containing a plain one (``mola``)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return sorted(n for n in self.names() if any(_matches(n, p.lower()) for p in patterns))

    def describe(self, name: str) -> str:
        key = name.lower()
        if key not in self.entries:
            decl = self.declared().get(key)
            if decl is not None:
                return decl.description
        self.get(name)
        return self.entries[key].description

    def attribute(self, name: str, attr: str) -> Any:
        """Attribute ``attr`` of entry ``name``'s object (e.g. a scenario's ``heterogeneity``):
        read from the declaration when the class states it literally, else from the object."""
        key = name.lower()
        if key not in self.entries:
            decl = self.declared().get(key)
            if decl is not None and attr in decl.attributes:
                return decl.attributes[attr]
        return getattr(self.get(name), attr)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name.lower() in self.declared() or name.lower() in self.entries


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


def plugin_files() -> list[Path]:
    """The plugin files of every plugin folder (``*.py`` not starting with ``_``), in order."""
    files: list[Path] = []
    for folder in plugin_dirs():
        folder = folder.resolve()
        if folder.is_dir():
            files += [p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
    return files


def load_plugin_file(path: Path) -> None:
    """Import plugin file ``path`` once, under ``bench_plugins.<folder>_<hash>.<file>``."""
    path = path.resolve()
    if path in _LOADED:
        return
    _LOADED.add(path)
    folder = path.parent
    mod_name = f"bench_plugins.{folder.name}_{abs(hash(str(folder))) % 10**8}.{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[mod_name]
        _LOADED.discard(path)
        raise


def load_plugin_dir(folder: Path) -> None:
    """Import every plugin file of ``folder`` (not starting with ``_``) once, in name order."""
    folder = folder.resolve()
    if folder.is_dir():
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                load_plugin_file(path)


def load_plugins() -> None:
    """Import every plugin file and the entry points (idempotent, cheap after the first call).
    Listing needs none of it (the files are read, :func:`declarations_in`)."""
    for folder in plugin_dirs():
        load_plugin_dir(folder)
    _load_entry_points()


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for group in ENTRY_POINT_GROUPS:
            for ep in importlib.metadata.entry_points(group=group):
                ep.load()


def _module_file(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def package_file(package: str, *parts: str) -> Path | None:
    """A file shipped inside the installed top-level ``package``, e.g. ``package_file("sklearn",
    "datasets", "data", "digits.csv.gz")``, found on disk without importing the package (an
    import of scikit-learn or torchvision costs 1.4-1.5 s); ``None`` where either is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, *parts)
        if path.is_file():
            return path
    return None


def _import_source(path: Path, module: str) -> None:
    if module:
        importlib.import_module(module)
    else:
        load_plugin_file(path)


# ------------------------------------------------------------------ declarations
#: the functions that register an entry (``description=`` or none), and the kind of entry
REGISTER_FUNCTIONS = {"register_method": "method", "register_architecture": "architecture",
                      "register_weighting": "weighting"}
#: decorators that register an entry (``register_scenario`` = ``scenarios.register``): without
#: ``description=``, the object's ``description`` attribute or the first line of its docstring
REGISTER_DECORATORS = {"register_scenario": "scenario"}
#: registries by the names they are imported under (``scenarios.register(...)``, ``.add``)
REGISTRY_NAMES = {"methods": "method", "architectures": "architecture",
                  "weightings": "weighting", "scenarios": "scenario", "backbones": "backbone",
                  "ablations": "ablation"}


@dataclass(frozen=True)
class Declaration:
    """An entry a file registers, as read from its source: its kind, name, description and the
    literal class attributes of a registered class (its own and its same-file bases')."""

    kind: str
    name: str
    description: str
    path: Path
    attributes: dict[str, Any] = field(default_factory=dict)
    #: the module to import for it (a registry's :attr:`Registry.modules`), else a plugin file
    module: str = ""

    def load(self) -> None:
        """Import the file that registers this entry."""
        _import_source(self.path, self.module)


_DECLARATIONS: dict[Path, tuple[list[Declaration], bool]] = {}


def declarations_in(path: Path) -> tuple[list[Declaration], bool]:
    """The registrations of ``path`` read from its source, and whether all of them could be read
    (every registration a literal top-level call or decorator with a literal name and
    description); cached per file."""
    path = path.resolve()
    if path not in _DECLARATIONS:
        _DECLARATIONS[path] = _read_declarations(path)
    return _DECLARATIONS[path]


def _register_kind(func: ast.expr) -> tuple[str, bool] | None:
    """``(kind, is_function)`` when ``func`` registers: ``register_method`` /
    ``api.register_method`` (a function) or ``scenarios.register`` / ``methods.add``."""
    name = func.id if isinstance(func, ast.Name) else (
        func.attr if isinstance(func, ast.Attribute) else "")
    if name in REGISTER_FUNCTIONS:
        return REGISTER_FUNCTIONS[name], True
    if name in REGISTER_DECORATORS:
        return REGISTER_DECORATORS[name], False
    if isinstance(func, ast.Attribute):
        owner = func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else (
            owner.attr if isinstance(owner, ast.Attribute) else "")
        if func.attr in ("register", "add") and owner_name in REGISTRY_NAMES:
            return REGISTRY_NAMES[owner_name], False
    return None


_UNREADABLE = object()


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNREADABLE


def _class_attributes(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> dict[str, Any]:
    """Literal class-level assignments of ``cls`` over those of its bases defined in the same
    file (a base from elsewhere contributes nothing: such attributes are read from the class)."""
    attrs: dict[str, Any] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes and base.id != cls.name:
            attrs.update(_class_attributes(classes[base.id], classes))
    for stmt in cls.body:
        targets = (stmt.targets if isinstance(stmt, ast.Assign)
                   else [stmt.target] if isinstance(stmt, ast.AnnAssign) and stmt.value else [])
        value = _literal(stmt.value) if targets else _UNREADABLE  # type: ignore[union-attr]
        for target in targets:
            if isinstance(target, ast.Name):
                if value is _UNREADABLE:
                    attrs.pop(target.id, None)
                else:
                    attrs[target.id] = value
    return attrs


def _read_declarations(path: Path) -> tuple[list[Declaration], bool]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, ValueError):
        return [], False  # importing it reports the problem
    for node in ast.walk(tree):  # a register function or registry under another name
        if isinstance(node, ast.ImportFrom) and any(
                a.asname and a.name in {*REGISTER_FUNCTIONS, *REGISTER_DECORATORS,
                                        *REGISTRY_NAMES} for a in node.names):
            return [], False
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    decls: list[Declaration] = []
    read: set[int] = set()
    readable = True

    def declare(call: ast.Call, kind: str, function: bool,
                target: ast.ClassDef | ast.FunctionDef | None) -> None:
        nonlocal readable
        read.add(id(call))
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        if any(k.arg is None for k in call.keywords):  # **kwargs could hold the name
            if "description" not in keywords or not call.args:
                readable = False
                return
        name = _literal(call.args[0] if call.args else keywords.get("name"))
        if name is None and target is not None and not function:
            name = target.name
        described = keywords.get("description")
        if described is None and not function and target is None and len(call.args) > 2:
            described = call.args[2]  # registry.add(name, obj, description)
        description = _literal(described)
        attrs = (_class_attributes(target, classes) if isinstance(target, ast.ClassDef)
                 else {})
        if description is None:
            if function or target is None:
                description = ""
            else:
                own = attrs.get("description")
                description = own or _first_line(ast.get_docstring(target, clean=False))
        if not isinstance(name, str) or not name or not isinstance(description, str):
            readable = False
            return
        decls.append(Declaration(kind, name.lower(), description, path, attrs))

    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            for deco in node.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                found = _register_kind(call.func if call else deco)
                if found is None:
                    continue
                if call is None:  # bare @register_scenario / @scenarios.register
                    readable = False
                    continue
                declare(call, found[0], False, node)
        else:
            value = (node.value if isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign))
                     else None)
            if isinstance(value, ast.Call) and (found := _register_kind(value.func)):
                declare(value, *found, None)
    for node in ast.walk(tree):  # any other registration: not readable
        if isinstance(node, ast.Call) and id(node) not in read and _register_kind(node.func):
            readable = False
    return decls, readable


# The registries. Plugins import these through ``bench.api``.
methods: Registry[Any] = Registry("method")
architectures: Registry[Any] = Registry("architecture")
weightings: Registry[Any] = Registry("weighting")
scenarios: Registry[Any] = Registry("scenario")
