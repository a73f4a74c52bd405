"""Method families: declared by every built-in method, inferred for plugins that declare none,
kept out of the config hash, written into records, and known to the report."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from bench import registry
from bench.models.method import FAMILIES, infer_family, method_family, resolve_method

ROOT = Path(__file__).resolve().parents[1]


def built_in_methods() -> list[str]:
    """The methods registered by the files of ``methods/``."""
    found = []
    for path in sorted((ROOT / "methods").glob("*.py")):
        found += re.findall(r'register_method\(\s*"(\w+)"', path.read_text())
    return found


def test_every_built_in_method_declares_a_known_family() -> None:
    names = built_in_methods()
    assert len(names) >= 21  # every registration found
    for name in names:
        assert registry.methods.get(name).family in FAMILIES, name


@pytest.mark.parametrize(("name", "family"), [
    ("hps", "baseline"), ("single_task", "baseline"), ("uniform", "baseline"),
    ("dwa", "loss_weighting"), ("pcgrad", "gradient"), ("gradnorm", "gradient"),
    ("mmoe", "architecture"), ("mola_grad", "low_rank"), ("mtlora_plus", "low_rank"),
    # A+B: A's family, unless A is a baseline trained with another weighting
    ("hps+pcgrad", "gradient"), ("hps+dwa", "loss_weighting"), ("hps+ew", "baseline"),
    ("mmoe+pcgrad", "architecture"), ("mola_grad+cagrad", "low_rank"),
    ("cgc+uw", "architecture"),
])
def test_method_family(name: str, family: str) -> None:
    assert method_family(name) == family


def test_a_plugin_without_a_family_gets_an_inferred_one(tmp_path: Path, monkeypatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plug.py").write_text(textwrap.dedent('''
        from bench.api import register_method
        register_method("plug_grad", architecture="hps", weighting="pcgrad",
                        description="no family declared")
        register_method("plug_loss", architecture="hps", weighting="uw",
                        description="no family declared")
        register_method("plug_arch", architecture="mmoe", weighting="ew",
                        description="no family declared")
        register_method("plug_own", architecture="hps", weighting="ew", family="mine",
                        description="a family of its own")
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(plugins))
    names = ("plug_grad", "plug_loss", "plug_arch", "plug_own")
    try:
        assert {n: method_family(n) for n in names} \
            == {"plug_grad": "gradient", "plug_loss": "loss_weighting",
                "plug_arch": "architecture", "plug_own": "mine"}
        assert infer_family(resolve_method("plug_grad")) == "gradient"
    finally:  # the registry outlives the test: later tests see the built-in plugins only
        for name in names:
            registry.methods.entries.pop(name, None)


def test_the_family_is_not_part_of_a_runs_identity() -> None:
    from dataclasses import replace

    from bench.run.plan import make_run

    spec = resolve_method("pcgrad")
    assert replace(spec, family="architecture").identity() == spec.identity()
    assert "family" not in make_run("pcgrad", "digits_domains", 0, "smoke").config
