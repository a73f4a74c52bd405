"""MoLA on a Transformer backbone (MoLA §5.5, Table 8 "ResNet vs Transformer"): MoLALinear, the
``backbone.*`` method overrides, MoLA-Grad/-Router on the Swin and the ``mola_backbone`` preset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.scenario import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup
from bench.models.method import (
    IncompatibleError,
    build_model,
    check_compatible,
    count_parameters,
    resolve_method,
)
from bench.models.mola import MoLALinear, mixture, mola_layers, run_stages
from bench.models.mtlora import SwinBackbone
from bench.registry import UnknownNameError
from bench.run.ablations import ablations
from bench.run.engine import train
from bench.run.plan import expand_ablation, make_run

torch.set_num_threads(1)

SWIN = {"backbone.name": "swin_embedded", "backbone.embed_dim": 8,
        "backbone.num_heads": (1, 1, 2, 2)}
SETUP = TrainingSetup(epochs=1, batch_size=8, optimizer="adam", lr=1e-3, eval_batch_size=64)


class _Tiny(Scenario):
    def __init__(self) -> None:
        self.name = "tiny_domains"
        self.heterogeneity = "domain"  # type: ignore[assignment]


def tiny_data(n: int = 12, tasks: int = 3, seed: int = 0) -> ScenarioData:
    """Multi-input data: ``tasks`` tasks of 1x16x16 inputs, 3 classes each, ResNet by default."""
    g = torch.Generator().manual_seed(seed)
    specs = tuple(TaskSpec(f"t{i}", "classification", 3, ("accuracy",)) for i in range(tasks))

    def split() -> Split:
        return Split({t.name: torch.randn(n, 1, 16, 16, generator=g) for t in specs},
                     {t.name: torch.randint(0, 3, (n,), generator=g) for t in specs})

    return ScenarioData("tiny_domains", "domain", specs, (1, 16, 16), split(), split(), split(),
                        SETUP, backbone="resnet",
                        backbone_kwargs={"widths": (8, 8, 16, 16)})


def _randomise(layers: list, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


# (1) MoLALinear ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 2), (10, 4)])  # (N, L) (N, H, W) (N·nW, L)
def test_linear_paths_agree_and_zero_adapters_change_nothing(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = MoLALinear(nn.Linear(6, 5), num_adapters=3, rank=2).double()
    assert layer.lora_A.shape == (3, 2, 6) and layer.lora_B.shape == (3, 5, 2)
    assert layer.scaling == 8.0
    x = torch.randn(*shape, 6, dtype=torch.float64)
    n = 5  # samples; a (10, 4, C) input holds 2 windows per sample, contiguous
    ids = torch.tensor([2, 0, 1, 1, 0])
    soft = torch.softmax(torch.randn(n, 3, dtype=torch.float64), dim=1)
    plain = layer.base(x)
    for path in ("grouped", "split", "sum", "auto"):
        layer.path = path  # type: ignore[assignment]
        with mixture([layer], task_ids=ids):
            assert torch.allclose(layer(x), plain, atol=1e-12)
        if path != "split":
            with mixture([layer], weights=soft):
                assert torch.allclose(layer(x), plain, atol=1e-12)
    _randomise([layer])
    rows = x.reshape(n, -1, 6)  # every token of sample i

    def direct(alpha: torch.Tensor) -> torch.Tensor:  # Eq. 1, one sample at a time
        outs = [F.linear(rows[i], layer.base.weight + torch.einsum(
            "k,koi->oi", alpha[i], layer.delta()), layer.base.bias) for i in range(n)]
        return torch.stack(outs).reshape(*shape, 5)

    ref = direct(F.one_hot(ids, 3).double())
    soft_ref = direct(soft)
    assert not torch.allclose(ref, plain, atol=1e-3)
    for path in ("grouped", "split", "sum", "auto"):
        layer.path = path  # type: ignore[assignment]
        with mixture([layer], task_ids=ids):
            assert torch.allclose(layer(x), ref, atol=1e-10), path
        with mixture([layer], task=1):
            assert torch.allclose(layer(x), direct(F.one_hot(torch.ones(n, dtype=torch.long),
                                                             3).double()), atol=1e-10), path
        if path != "split":
            with mixture([layer], weights=soft):
                assert torch.allclose(layer(x), soft_ref, atol=1e-10), path
    with pytest.raises(RuntimeError, match="outside"):
        layer(x)
    with mixture([layer], task_ids=torch.tensor([0, 1, 2])), pytest.raises(ValueError,
                                                                           match="multiple"):
        layer(x)


# (2) the backbone override and compatibility ----------------------------------------------------
def test_backbone_override_builds_a_trainable_swin_and_enters_the_identity() -> None:
    data = tiny_data()
    spec = resolve_method("hps").with_overrides(SWIN)
    assert resolve_method("hps").identity().keys() == spec.identity().keys() - {
        "backbone", "backbone_kwargs"}  # no override: the identity (config hash) is unchanged
    assert spec.identity()["backbone"] == "swin_embedded"
    assert spec.identity()["backbone_kwargs"]["embed_dim"] == 8
    model = build_model(spec, data)
    assert isinstance(model.encoder, SwinBackbone) and model.encoder.out_channels == 64
    assert "widths" not in spec.resolve_backbone(data.backbone, data.backbone_kwargs)[1]
    trainable, total = count_parameters(model)
    assert trainable == total  # HPS trains the whole Swin (not frozen)
    # a keyword alone applies to the scenario's encoder, over the scenario's keywords
    name, kwargs = resolve_method("hps").with_overrides({"backbone.blocks": (1, 1, 1, 2)}
                                                         ).resolve_backbone("resnet", {"w": 1})
    assert name == "resnet" and kwargs == {"w": 1, "blocks": (1, 1, 1, 2)}
    with pytest.raises(ValueError, match="backbone.name"):
        resolve_method("hps").with_overrides({"encoder.name": "x"})


def test_compatibility_on_the_swin() -> None:
    scen = _Tiny()
    for method in ("hps", "mola_grad", "mola_router", "mola_grad+pcgrad"):
        check_compatible(resolve_method(method).with_overrides(SWIN), scen)
    with pytest.raises(IncompatibleError, match="swin_embedded"):
        check_compatible(resolve_method("cross_stitch").with_overrides(SWIN), scen)
    with pytest.raises(IncompatibleError, match="Swin"):
        check_compatible(resolve_method("mtlora").with_overrides({"backbone.name": "resnet"}),
                         scen)


def test_wrong_backbone_name_suggests_the_right_one() -> None:
    with pytest.raises(UnknownNameError, match="swin_embedded"):
        check_compatible(resolve_method("mola_grad").with_overrides(
            {"backbone.name": "swin_embeded"}), _Tiny())
    with pytest.raises(UnknownNameError, match="swin_embedded"):
        make_run("hps", "digits_domains", 0, "smoke", {"backbone.name": "swin_embeded"})


# (3) MoLA on the Swin ---------------------------------------------------------------------------
def test_swin_stage_split_matches_the_forward() -> None:
    torch.manual_seed(0)
    enc = build_model(resolve_method("hps").with_overrides(SWIN), tiny_data()).encoder.eval()
    x = torch.randn(2, 1, 16, 16)
    full = enc(x)
    for k in range(len(enc.stages) + 1):
        assert torch.allclose(run_stages(enc, run_stages(enc, x, -1, k), k), full, atol=1e-6)


@pytest.mark.parametrize("placement", [[3], [1]])  # stage 1: 4 windows per sample
def test_mola_grad_gradient_isolation_on_the_swin(placement: list[int]) -> None:
    torch.manual_seed(0)
    data = tiny_data()
    model = build_model(resolve_method("mola_grad").with_overrides(
        {**SWIN, "arch.placement": placement}), data)
    layers = mola_layers(model)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, MoLALinear)}
    assert names == {"qkv", "proj", "fc1", "fc2"} and len(layers) == 4  # one block per stage
    assert model.first_adapted == placement[0]
    _randomise(layers)
    x = torch.cat([data.train.inputs[t][:3] for t in data.task_names])  # type: ignore[index]
    ids = torch.arange(3).repeat_interleave(3)
    perm = torch.randperm(9)
    x, ids = x[perm], ids[perm]
    model.eval()
    shared = model.encoder.stem.proj.weight
    for i, task in enumerate(data.task_names):
        model.zero_grad(set_to_none=True)
        model(x, task_ids=ids)[task].square().sum().backward()
        for layer in layers:
            for j in range(3):
                grads = [p.grad[j] if p.grad is not None else torch.zeros(1)
                         for p in (layer.lora_A, layer.lora_B)]
                assert [bool(g.abs().sum() > 0) for g in grads] == [j == i, j == i], (task, j)
        assert float(shared.grad.abs().sum()) > 0


def test_mola_router_mixes_per_sample_on_the_swin() -> None:
    torch.manual_seed(0)
    data = tiny_data()
    model = build_model(resolve_method("mola_router").with_overrides(SWIN), data).eval()
    _randomise(mola_layers(model))
    x = data.train.inputs["t0"][:4]  # type: ignore[index]
    rep = model.encode(x, None)
    # each sample's representation depends on that sample only (α per sample, not per batch)
    assert torch.allclose(model.encode(x[:1], None), rep[:1], atol=1e-5)
    assert {type(m).__name__ for m in mola_layers(model)} == {"MoLALinear"}


@pytest.mark.parametrize("method", ["hps", "mola_router", "mola_grad"])
def test_smoke_training_on_the_swin(method: str) -> None:
    data = tiny_data()
    spec = resolve_method(method).with_overrides(SWIN)
    result = train(spec, _Tiny(), data, SETUP, seed=0)
    assert result.steps == 2 and set(result.test_metrics) == set(data.task_names)
    for metrics in result.test_metrics.values():
        assert 0.0 <= metrics["accuracy"] <= 100.0
    # the run used the Swin, not the scenario's ResNet
    assert result.trainable_params == count_parameters(build_model(spec, data))[0]
    assert result.trainable_params != count_parameters(build_model(
        resolve_method(method), data))[0]


# (4) the preset -----------------------------------------------------------------------------------
def test_mola_backbone_preset_plans() -> None:
    assert "mola_backbone" in ablations.list()
    plan = expand_ablation("mola_backbone", None, [0], "smoke")
    assert not plan.skipped
    labels = [r.display for r in plan.runs]
    assert labels == [f"{m} ({b})" for m in ("hps", "mola_router", "mola_grad")
                      for b in ("ResNet", "Transformer")]
    for run in plan.runs:
        identity = run.config["method_identity"]
        assert identity.get("backbone") == ("swin_embedded" if "Transformer" in run.label
                                            else None)
    assert len({r.config_hash for r in plan.runs}) == 6
