"""Instant commands: ``list``, every ``--help``, ``results check`` and ``leaderboard`` import no
training stack (torch, torchvision, timm, LibMTL, torchjd, scikit-learn, cvxpy), because the
registries read the plugin files' registrations from their source (``bench.registry``) and the
heavy imports wait for the functions that need them.

Each command runs in a fresh interpreter that reports the modules it imported; the listings
read that way must equal what importing every plugin registers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import registry

ROOT = Path(__file__).resolve().parents[1]
#: what an instant command must not import (top-level package names)
HEAVY = ("torch", "torchvision", "timm", "LibMTL", "torchjd", "sklearn", "cvxpy", "pandas",
         "seaborn")
#: runs ``bench.cli.main`` with argv and prints the heavy modules it imported, as JSON
PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from bench.cli import main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(sys.argv[1:])
        except SystemExit as exit:  # --help
            code = exit.code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    print(json.dumps({"code": code, "heavy": heavy}))
""")


def _env() -> dict[str, str]:
    """This environment for a fresh interpreter: the repository importable, no plugin folders."""
    env = {k: v for k, v in os.environ.items() if k != registry.PLUGIN_PATH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _probe(args: list[str], cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}", *args],
                         cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of one scenario's committed records (few: the leaderboard is quick)."""
    target = tmp_path_factory.mktemp("results")
    source = ROOT / "results" / "default" / "digits_domains"
    for path in sorted(source.glob("hps/*.json")) + sorted(source.glob("single_task/*.json")):
        dest = target / path.relative_to(ROOT / "results")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    return target


COMMANDS = [
    *(["list", what] for what in ("methods", "scenarios", "architectures", "weightings",
                                  "backbones", "ablations")),
    ["list", "methods", "mola"],
    ["--help"],
    *([command, "--help"] for command in ("list", "run", "leaderboard", "results", "perf",
                                          "data")),
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_list_and_help_import_no_training_stack(args: list[str], tmp_path: Path) -> None:
    result = _probe(args, tmp_path)
    assert result["code"] == 0
    assert result["heavy"] == []


@pytest.mark.parametrize("args", [["results", "check"], ["leaderboard", "--output", "-"]],
                         ids=" ".join)
def test_records_commands_import_no_training_stack(args: list[str], records: Path,
                                                   tmp_path: Path) -> None:
    result = _probe([*args, "--results-dir", str(records)], tmp_path)
    assert result["code"] == 0
    assert result["heavy"] == []


_DECLARED_EQUALS_REGISTERED = """
from bench import registry
unreadable = [p.name for p in registry.plugin_files() if not registry.declarations_in(p)[1]]
assert unreadable == [], unreadable
regs = [registry.methods, registry.architectures, registry.weightings, registry.scenarios]
declared = {reg.kind: reg.declared() for reg in regs}
registry.load_plugins()
for reg in regs:
    assert sorted(declared[reg.kind]) == sorted(reg.entries), reg.kind
    for name, decl in declared[reg.kind].items():
        assert decl.description == reg.entries[name].description, (reg.kind, name)
for name, decl in declared["scenario"].items():
    assert decl.attributes["heterogeneity"] == registry.scenarios.get(name).heterogeneity
assert len(declared["method"]) == 56, len(declared["method"])
"""


def test_declarations_read_from_source_equal_the_registrations() -> None:
    """Every built-in plugin file's registrations can be read without importing it, and what is
    read (names, descriptions, a scenario's heterogeneity) is what importing registers — in a
    fresh interpreter, where no other test has registered anything."""
    env = {k: v for k, v in os.environ.items() if k != "BENCH_PLUGIN_PATH"}
    done = subprocess.run([sys.executable, "-c", _DECLARED_EQUALS_REGISTERED],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_backbones_are_declared_by_their_modules() -> None:
    from bench.models.registries import backbones

    declared = backbones.declared()
    import bench.models.backbones  # noqa: F401  (registers resnet, resnet18, timm_resnet18)
    import bench.models.mtlora  # noqa: F401  (registers swin_embedded, swin_t)

    assert sorted(declared) == sorted(backbones.entries)
    assert {n: d.description for n, d in declared.items()} == {
        n: e.description for n, e in backbones.entries.items()}


def test_a_registration_that_cannot_be_read_imports_its_file(tmp_path: Path,
                                                             monkeypatch) -> None:
    """A computed name (a loop) is not readable: listing imports that file, as before."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "looped.py").write_text(textwrap.dedent('''
        """Scenarios registered in a loop (names computed)."""
        from bench.registry import scenarios

        for suffix in ("a", "b"):
            scenarios.add(f"looped_{suffix}", object(), "a looped registration")
    '''))
    (plugins / "plain.py").write_text(textwrap.dedent('''
        """A literal registration: read, not imported, until used."""
        from bench.registry import scenarios

        scenarios.add("plain_one", object(), "a literal registration")
        raise RuntimeError("imported")
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(plugins))
    try:
        assert registry.declarations_in(plugins / "looped.py") == ([], False)
        assert {"looped_a", "looped_b", "plain_one"} <= set(registry.scenarios.list("*_*"))
        assert registry.scenarios.describe("plain_one") == "a literal registration"
        assert "plain_one" in registry.scenarios and "plain_one" not in registry.scenarios.entries
        with pytest.raises(RuntimeError, match="imported"):
            registry.scenarios.get("plain_one")
    finally:
        for name in ("looped_a", "looped_b", "plain_one"):
            registry.scenarios.entries.pop(name, None)


def test_the_same_name_declared_by_two_files_is_refused(tmp_path: Path, monkeypatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for stem in ("one", "two"):
        (plugins / f"{stem}.py").write_text(
            'from bench.api import register_method\n'
            'register_method("twice_m", architecture="hps", weighting="ew", description="d")\n')
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(plugins))
    with pytest.raises(ValueError, match="'twice_m' is registered twice"):
        registry.methods.list()


def test_python_m_bench_ends_with_mains_code_its_whole_output_and_the_atexit_handlers() -> None:
    """``python -m bench`` skips the interpreter's teardown (``os._exit``) but loses nothing:
    every line printed, ``main``'s exit code, the ``atexit`` handlers run (here one registered
    before the entry point runs)."""
    wrapper = ("import atexit, runpy, sys\n"
               "atexit.register(lambda: print('atexit handler ran', flush=True))\n"
               "sys.argv = ['bench', *sys.argv[1:]]\n"
               "runpy.run_module('bench', run_name='__main__')\n")
    listed = subprocess.run([sys.executable, "-c", wrapper, "list", "methods"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[-1] == "atexit handler ran"
    names = {line.split()[0] for line in lines[:-1] if line.strip()}
    # the built-in methods (other tests register more in this process: not the reference)
    assert {"hps", "single_task", "pcgrad", "mola_grad", "mola_router", "mtlora"} <= names
    assert len(names) >= 56
    refused = subprocess.run([sys.executable, "-c", wrapper, "leaderboard", "--selection",
                              "nonsense"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert refused.stdout == "atexit handler ran\n"


SWEEP_WORKER = textwrap.dedent("""
    import json, sys, torch
    from bench.run import engine
    from bench.run.pool import SWEEP_PRELOAD
    import importlib
    for name in SWEEP_PRELOAD:
        importlib.import_module(name)
    engine.deterministic_algorithms()
    print(json.dumps({  # the packages themselves (LibMTL's torchvision shim is no import)
        "heavy": sorted(set(sys.modules) & {"torchvision", "timm", "torchjd", "sklearn"}),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }))
""")


def test_a_sweep_worker_preloads_no_vision_or_aggregator_stack_and_runs_deterministic() -> None:
    """What a fork server preloads stays light (torchvision, timm, torchjd and scikit-learn are
    imported by the runs that use them), and the engine's deterministic switch sets torch's
    flags as ``torch.use_deterministic_algorithms(True, warn_only=True)`` does."""
    out = subprocess.run([sys.executable, "-c", SWEEP_WORKER], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heavy": [], "deterministic": True, "warn_only": True}
