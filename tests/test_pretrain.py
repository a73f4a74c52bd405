"""The pretrained start of the embedded backbones (``python -m bench pretrain``, issue 13): the
fractal generator, the pretraining's reproducibility, the committed checkpoints and their use."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data import fractals
from bench.models import pretrained
from bench.models.method import build_model, resolve_method
from bench.run.plan import make_run
from bench.run.pretrain import BACKBONES, SMOKE, PretrainConfig, pretrain, save

SMOKE_RUN = ["--profile", "smoke", "--seeds", "0"]


def test_fractal_systems_follow_the_sigma_factor_and_are_contractive() -> None:
    rng = np.random.Generator(np.random.PCG64(3))
    for n_maps in (2, 3, 4):
        system = fractals.sample_system(rng, n_maps)
        s = np.linalg.svd(system.A, compute_uv=False)  # (N, 2), descending
        assert (s <= 1.0 + 1e-9).all() and (s > 0).all()
        assert (5 + n_maps) / 2 - 1e-9 <= (s[:, 0] + 2 * s[:, 1]).sum() <= (6 + n_maps) / 2 + 1e-9
        assert system.p.sum() == pytest.approx(1.0) and (system.p > 0).all()


def test_bank_is_a_function_of_its_seed() -> None:
    a, b = fractals.make_bank(5, 2, seed=7), fractals.make_bank(5, 2, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, fractals.make_bank(5, 2, seed=8).images)
    assert a.images.shape == (10, fractals.CANVAS, fractals.CANVAS)
    assert (fractals.fill_rate(a.images[::2]) >= fractals.MIN_FILL).all()  # the categories
    x = fractals.augment(a.images, 16, torch.Generator().manual_seed(0))
    assert x.shape == (10, 1, 16, 16) and torch.isfinite(x).all()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_smoke_pretraining_reproduces_its_file(backbone: str, tmp_path: Path) -> None:
    first = save(pretrain(backbone, SMOKE), tmp_path / "a.pt")
    second = save(pretrain(backbone, SMOKE), tmp_path / "b.pt")
    assert first == second
    other = save(pretrain(backbone, replace(SMOKE, seed=1)), tmp_path / "c.pt")
    assert other != first


def test_pretraining_reads_nothing_of_the_digits(monkeypatch) -> None:
    import sklearn.datasets

    from bench.data import digits

    def forbidden(*args, **kwargs):
        raise AssertionError("pretraining read the digits data")

    monkeypatch.setattr(sklearn.datasets, "load_digits", forbidden)
    monkeypatch.setattr(digits, "_digits", forbidden)
    monkeypatch.setattr(digits, "digits", forbidden)
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    result = pretrain("resnet", SMOKE)
    assert all(np.isfinite(result.losses))
    assert not [f for f in opened if "digit" in f.lower()]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_the_committed_checkpoint_is_listed_and_reproduces_its_first_steps(backbone: str) -> None:
    item = pretrained.entry(backbone)  # the file exists and has the manifest's SHA-256
    assert item["command"] == f"python -m bench pretrain --backbone {backbone}"
    cfg = PretrainConfig(**item["config"])
    assert cfg == PretrainConfig()  # the documented command's defaults made it
    losses = pretrain(backbone, cfg, stop_after=len(item["first_losses"])).losses
    np.testing.assert_allclose(losses, item["first_losses"], rtol=2e-4)


def test_embedded_runs_start_pretrained_and_say_so_in_their_config() -> None:
    sha = {name: pretrained.entry(name)["sha256"] for name in BACKBONES}
    for scenario in ("digits_domains", "digits_tasks", "digits_scene"):
        hps = make_run("hps", scenario, 0, "default").config
        assert hps["init"] == {"backbone": "resnet", "init": "pretrained", "sha256": sha["resnet"]}
        mtlora = make_run("mtlora", scenario, 0, "default").config
        assert mtlora["init"] == {"backbone": "swin_embedded", "init": "pretrained",
                                  "sha256": sha["swin_embedded"]}
        scratch = make_run("hps", scenario, 0, "default", {"backbone.init": "scratch"})
        assert scratch.config["init"]["init"] == "scratch"
        assert scratch.config_hash != make_run("hps", scenario, 0, "default").config_hash
    # MoLA §5.5's Transformer backbone swap inherits the scenario's start
    swapped = make_run("hps", "digits_domains", 0, "default", {"backbone.name": "swin_embedded"})
    assert swapped.config["init"]["backbone"] == "swin_embedded"
    assert swapped.config["init"]["init"] == "pretrained"


def _committed_state(backbone: str) -> dict[str, torch.Tensor]:
    path = pretrained.WEIGHTS_DIR / pretrained.entry(backbone)["file"]
    return torch.load(path, weights_only=True)


def test_models_load_the_committed_weights_and_mtlora_keeps_them_frozen(tiny_scenario) -> None:
    from bench.api import scenarios

    data = scenarios.get("digits_domains")().load("smoke")
    hps = build_model(resolve_method("hps"), data)
    resnet = _committed_state("resnet")
    assert torch.equal(hps.encoder.stem[0].weight, resnet["stem.0.weight"])
    scratch = build_model(resolve_method("hps").with_overrides({"backbone.init": "scratch"}),
                          data)
    assert not torch.equal(scratch.encoder.stem[0].weight, resnet["stem.0.weight"])

    mtlora = build_model(resolve_method("mtlora"), data)
    swin = list(_committed_state("swin_embedded").values())
    # MTLoRA keeps the pretrained Swin frozen (its §3.4 trains the patch embedding, patch
    # merging, norms and position biases, the low-rank modules and the decoders)
    frozen = [p for p in mtlora.encoder.parameters() if not p.requires_grad]
    assert len(frozen) >= 8
    for tensor in frozen:
        assert any(t.shape == tensor.shape and torch.equal(t, tensor) for t in swin)


@pytest.fixture
def weights_copy(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, folder)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(pretrained, "MANIFEST", folder / "manifest.json")
    pretrained._verified.cache_clear()
    yield folder
    pretrained._verified.cache_clear()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_modified_checkpoint_stops_the_run_before_training(weights_copy: Path, tmp_path: Path,
                                                             capsys) -> None:
    path = weights_copy / pretrained.manifest()["resnet"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    results = tmp_path / "results"
    code = main(["run", "--method", "hps", "--scenario", "digits_domains", *SMOKE_RUN,
                 "--results-dir", str(results), "--leaderboard", str(tmp_path / "lb.md")])
    assert code == 2
    line = _one_line(capsys)
    assert "SHA-256" in line and "pretrain --backbone resnet" in line
    assert not results.exists() or not any(results.rglob("*.json"))
    # training from scratch does not need the weights
    assert main(["run", "--method", "hps", "--scenario", "digits_domains", *SMOKE_RUN,
                 "--set", "backbone.init=scratch", "--dry-run",
                 "--results-dir", str(results)]) == 0


def test_a_backbone_of_another_shape_cannot_start_pretrained(tmp_path: Path, capsys) -> None:
    code = main(["run", "--method", "hps", "--scenario", "digits_domains", *SMOKE_RUN,
                 "--set", "backbone.widths=[16,32,64,128]", "--results-dir",
                 str(tmp_path / "r"), "--leaderboard", str(tmp_path / "lb.md")])
    assert code == 2
    assert "backbone.init=scratch" in _one_line(capsys)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def test_an_unknown_init_is_refused(tmp_path: Path, capsys) -> None:
    code = main(["run", "--method", "hps", "--scenario", "digits_domains", *SMOKE_RUN,
                 "--set", "backbone.init=imagenet", "--results-dir", str(tmp_path / "r")])
    assert code == 2
    assert "init" in _one_line(capsys)
