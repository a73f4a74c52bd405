"""Installable as a package, not only as a checkout: a wheel carries the built-in methods and
scenarios, and an installed copy used from an empty folder lists them.

The wheel is installed without its dependencies into a fresh venv that sees this environment's
packages (torch, LibMTL...) through a path file, so the test takes seconds, not a 5 GB install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _built_in(folder: str) -> set[str]:
    return {p.name for p in (ROOT / folder).glob("*.py") if not p.name.startswith("_")}


def _registered_methods() -> set[str]:
    """The names ``methods/*.py`` pass to ``register_method`` (read from the source)."""
    found = re.findall(r'register_method\(\s*"([^"]+)"',
                       "".join(p.read_text() for p in (ROOT / "methods").glob("*.py")))
    return set(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # a copy: the build leaves nothing in the repo
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("bench", "methods", "datasets"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                   check=True, cwd=source, capture_output=True, timeout=300)
    (found,) = out.glob("mtl_hetero_bench-*.whl")
    return found


def test_the_wheel_ships_the_built_in_plugins_under_bench(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("methods", "datasets"):
        shipped = {Path(n).name for n in names if n.startswith(f"bench/{folder}/")}
        assert _built_in(folder) <= shipped, f"{folder} missing from the wheel"
    assert not any(n.startswith(("methods/", "datasets/")) for n in names)  # no top-level names
    assert "bench/report/paper_results.json" in names


def test_an_installed_wheel_lists_methods_from_an_empty_folder(wheel: Path,
                                                               tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True).stdout
    # this environment's third-party packages, after the fresh venv's own (the wheel's bench)
    Path(site.strip(), "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BENCH_PLUGIN_PATH")}
    where = subprocess.run([str(python), "-c", "import bench; print(bench.__file__)"],
                           cwd=empty, env=env, check=True, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # not the checkout
    listed = subprocess.run([str(python), "-m", "bench", "list", "methods"], cwd=empty, env=env,
                            capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert names == _registered_methods()  # every method the checkout's files register
    scenarios = subprocess.run([str(python), "-m", "bench", "list", "scenarios"], cwd=empty,
                               env=env, capture_output=True, text=True, timeout=600)
    assert "digits_scene" in scenarios.stdout and "medmnist_mola" in scenarios.stdout
