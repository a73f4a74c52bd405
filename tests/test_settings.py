"""Every setting a run takes (train.*, arch.*, weighting.*, backbone.*, --seeds) is checked
against its declared type and range when the run is planned: one line naming the problem and
the fix, exit code 2, nothing written, before anything is trained or allocated."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.data.settings import Settings, SettingsError, UnknownSettingError
from bench.run.plan import expand, make_run

SCENARIO = "digits_domains"

#: (method, --set or --seeds arguments, what the one line says)
REFUSED = [
    ("cagrad", ["--set", "weighting.calpah=0.4"], "did you mean weighting.calpha?"),
    ("hps", ["--set", "arch.bogus=3"], "unknown setting arch.bogus"),
    ("mola_grad", ["--set", "arch.bogus=3"], "unknown setting arch.bogus"),
    ("hps", ["--set", "train.lr=abc"], "train.lr=\"abc\" refused"),
    ("hps", ["--set", "train.lr=-1"], "greater than 0"),
    ("hps", ["--set", "train.lr=0"], "greater than 0"),
    ("hps", ["--set", "train.lr=NaN"], "finite number"),
    ("hps", ["--set", "train.epochs=0"], "greater than or equal to 1"),
    ("hps", ["--set", "train.epochs=1.5"], "valid integer"),
    ("hps", ["--set", "train.batch_size=0"], "greater than or equal to 1"),
    ("hps", ["--set", "train.optimizer=rmsprop"], "'adam', 'adamw' or 'sgd'"),
    ("hps", ["--set", "train.scheduler=bogus"], "'none', 'cosine' or 'step'"),
    ("hps", ["--set", "train.scheduler=step"], "needs train.step_size >= 1"),
    ("hps", ["--set", "train.lrr=0.1"], "did you mean train.lr?"),
    ("mola_grad", ["--set", "arch.rank=0"], "greater than or equal to 1"),
    ("mola_grad", ["--set", "arch.rank=-1"], "greater than or equal to 1"),
    ("mola_grad", ["--set", "arch.rank=100000000"], "less than or equal to 1024"),
    ("mola_router", ["--set", "arch.num_adapters=0"], "arch.num_adapters=0 refused"),
    ("mtlora", ["--set", "arch.locations=[\"qkv\",\"mlp\"]"], "arch.locations"),
    ("mmoe", ["--set", "arch.num_experts=true"], "valid integer"),
    ("rlw", ["--set", "weighting.dist=constrained_Bernoulli"], "weighting.dist"),
    ("hps", ["--set", "backbone.widths=[0,1,2,3]"], "backbone.widths"),
    ("hps", ["--set", "backbone.bogus=1"], "unknown setting backbone.bogus"),
    ("hps", ["--seeds", "-1"], "--seeds: -1 is not a seed"),
    ("hps", ["--seeds", "99999999999999999999"], "is not a seed"),
    ("hps", ["--seeds", "0,0"], "--seeds repeats 0"),
]


@pytest.mark.parametrize(("method", "args", "says"), REFUSED,
                         ids=[" ".join(a) for _, a, _ in REFUSED])
def test_a_bad_setting_is_one_line_exit_2_and_nothing_written(method: str, args: list[str],
                                                              says: str, tmp_path: Path,
                                                              capsys) -> None:
    code = main(["run", "--method", method, "--scenario", SCENARIO, "--profile", "smoke",
                 "--jobs", "1", "--results-dir", str(tmp_path / "r"), "--leaderboard",
                 str(tmp_path / "lb.md"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and says in err[0], err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_huge_rank_is_refused_before_anything_is_built(monkeypatch) -> None:
    import bench.models.method

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(bench.models.method, "build_model", no_build)
    with pytest.raises(SettingsError, match="less than or equal to 1024"):
        make_run("mola_grad", SCENARIO, 0, "smoke", {"arch.rank": 100_000_000})


def test_valid_settings_pass_and_keep_their_config() -> None:
    run = make_run("cagrad", SCENARIO, 0, "smoke", {"weighting.calpha": 0.4, "train.lr": 1})
    assert run.config["method_identity"]["weighting_kwargs"] == {"calpha": 0.4, "rescale": 1}
    assert run.training.lr == 1.0
    make_run("mola_grad", SCENARIO, 0, "smoke", {"arch.placement": "all",
                                                 "arch.rank": [2, 2, 2, 2]})
    make_run("mola_grad", SCENARIO, 0, "smoke", {"arch.placement": [0, "stem"],
                                                 "arch.rank": {"0": 4, "stem": 2}})
    make_run("mtlora", "digits_scene", 0, "smoke", {"arch.locations": ["qkv", "fc1"]})


def test_all_with_a_setting_runs_the_methods_that_have_it(capsys) -> None:
    plan = expand(None, [SCENARIO], [0], "smoke", run_all=True,
                  overrides={"arch.num_adapters": 2})
    assert {run.method for run in plan.runs} == {"mola_router"}
    assert any("unknown setting arch.num_adapters" in why for _, _, why in plan.skipped)
    with pytest.raises(UnknownSettingError, match="arch.bogus"):  # no method has it
        expand(None, [SCENARIO], [0], "smoke", run_all=True, overrides={"arch.bogus": 1})


def test_every_scenario_profile_has_a_valid_training_setup() -> None:
    for name in registry.scenarios.list():
        scen = registry.scenarios.get(name)()
        for profile in scen.profiles:
            scen.setup(profile)  # a pydantic dataclass: validated when built


PLUGIN = '''
"""A third-party weighting that declares only defaults, and one that declares settings."""
from typing import Annotated
import numpy as np
from pydantic import Field
from bench.api import CompatWeighting, Settings, register_method, register_weighting

class Scaled(CompatWeighting):
    needs_task_gradients = False

    def backward(self, losses, **kwargs):
        (losses.sum() * kwargs["gamma"]).backward()
        return np.ones(self.task_num)

class ScaledSettings(Settings):
    gamma: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0

register_weighting("scaled_inferred", Scaled, defaults={"gamma": 1.0, "mode": "sum"})
register_weighting("scaled_declared", Scaled, settings=ScaledSettings)
register_method("hps_inferred", architecture="hps", weighting="scaled_inferred",
                description="test")
register_method("hps_declared", architecture="hps", weighting="scaled_declared",
                description="test")
'''


def test_plugins_are_checked_with_declared_or_inferred_types(tmp_path: Path,
                                                             monkeypatch) -> None:
    (tmp_path / "scaled.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(tmp_path))
    make_run("hps_inferred", SCENARIO, 0, "smoke", {"weighting.gamma": 3})  # int for a float
    with pytest.raises(SettingsError, match="valid number"):
        make_run("hps_inferred", SCENARIO, 0, "smoke", {"weighting.gamma": "abc"})
    with pytest.raises(SettingsError, match="valid string"):
        make_run("hps_inferred", SCENARIO, 0, "smoke", {"weighting.mode": 1})
    with pytest.raises(UnknownSettingError, match="did you mean weighting.gamma"):
        make_run("hps_inferred", SCENARIO, 0, "smoke", {"weighting.gama": 0.5})
    with pytest.raises(SettingsError, match="less than or equal to 2"):
        make_run("hps_declared", SCENARIO, 0, "smoke", {"weighting.gamma": 3})
    run = make_run("hps_declared", SCENARIO, 0, "smoke")
    assert run.config["method_identity"]["weighting_kwargs"] == {"gamma": 1.0}


def test_declare_settings_or_defaults_not_both() -> None:
    from bench.api import register_weighting
    from bench.models.compat import CompatWeighting

    class Nothing(Settings):
        pass

    with pytest.raises(ValueError, match="not both"):
        register_weighting("twice", CompatWeighting, settings=Nothing, defaults={})
