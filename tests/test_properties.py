"""Property tests (hypothesis): random ``--set`` keys and values thrown at planning, and random
mutations of records thrown at ``results check``, the leaderboard and resume, give one-line
errors or warnings — never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import UsageError, _overrides, main
from bench.models.method import IncompatibleError
from bench.registry import UnknownNameError
from bench.run.plan import expand, make_run
from bench.run.sweep import pending

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "digits_domains"
#: what the CLI turns into one line and exit code 2 (bench.cli.main)
USER_ERRORS = (UsageError, UnknownNameError, IncompatibleError, ValueError)

KNOWN = ["rank", "placement", "alpha", "path", "adapt_shortcut", "num_adapters", "calpha",
         "rescale", "mgda_gn", "num_experts", "lr", "epochs", "batch_size", "optimizer",
         "scheduler", "step_size", "sampling", "warmup_epochs", "min_lr", "name", "widths",
         "blocks", "strides", "embed_dim", "checkpoint", "pretrained", "locations"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
keys = st.builds(lambda group, name: f"{group}{name}",
                 st.sampled_from(["arch.", "weighting.", "train.", "backbone.", "", "bogus.",
                                  "arch", "train.."]),
                 st.sampled_from(KNOWN) | st.text(max_size=6))
values = json_values.map(json.dumps) | st.text(max_size=10)


def _one_line(err: BaseException) -> None:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and text.strip(), repr(text)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(method=st.sampled_from(["hps", "mola_grad", "mola_router", "cagrad", "mgda",
                               "mtlora", "mmoe+pcgrad", "cross_stitch"]),
       items=st.lists(st.tuples(keys, values), min_size=1, max_size=3),
       seeds=st.lists(st.integers(min_value=-3, max_value=2**40), min_size=1, max_size=3))
def test_random_settings_at_planning_give_one_line_errors(method: str,
                                                          items: list[tuple[str, str]],
                                                          seeds: list[int]) -> None:
    try:
        overrides = _overrides([f"{key}={value}" for key, value in items])
        plan = expand([method], [SCENARIO], seeds, "smoke", overrides=overrides)
    except USER_ERRORS as err:
        _one_line(err)
        return
    for run in plan.runs:  # a planned run has a config that hashes
        assert len(run.config_hash) == 64


# ---------------------------------------------------------------- records
def _copy_records(target: Path) -> list[Path]:
    out = []
    for method in ("hps", "single_task"):
        source = ROOT / "results" / "default" / SCENARIO / method
        shutil.copytree(source, target / "default" / SCENARIO / method)
        out += sorted((target / "default" / SCENARIO / method).glob("*.json"))
    return out


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (keys and list indices)."""
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutations(draw: st.DrawFn, record: dict) -> tuple[str, Any]:
    """A mutated record: a value replaced, a key deleted, or the file's text damaged."""
    kind = draw(st.sampled_from(["replace", "replace", "delete", "text"]))
    if kind == "text":
        text = json.dumps(record)
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        return "text", text[:cut] + draw(st.text(max_size=5))
    mutated = json.loads(json.dumps(record))
    path = draw(st.sampled_from([p for p in _paths(mutated) if p]))
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    if kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return "json", mutated


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], dict]:
    root = tmp_path_factory.mktemp("mutations")
    paths = _copy_records(root / "r")
    originals = {p: p.read_text() for p in paths}
    return root, paths, originals


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_record_mutations_give_warnings_not_tracebacks(record_dir, data, capsys) -> None:
    root, paths, originals = record_dir
    for path, text in originals.items():  # every example starts from the intact records
        path.write_text(text)
    victims = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=2, unique=True))
    for victim in victims:
        kind, content = data.draw(mutations(json.loads(originals[victim])))
        victim.write_text(content if kind == "text" else json.dumps(content))
    capsys.readouterr()
    assert main(["results", "check", "--results-dir", str(root / "r")]) in (0, 1)
    assert main(["leaderboard", "--results-dir", str(root / "r"), "--output",
                 str(root / "lb.md")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    for line in err.strip().splitlines():
        assert line.startswith(("warning: skipped ", "leaderboard written to ")), line
    for line in out.strip().splitlines():
        assert line.startswith(("corrupt: ", "failed: ", "diverged: ", "leftover: ")) or \
            "valid records" in line, line
    runs = [make_run(m, SCENARIO, s, "default") for m in ("hps", "single_task") for s in (0, 1, 2)]
    pending(runs, root / "r")  # resume reads the same records: no crash either
