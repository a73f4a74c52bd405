"""MoLA layers and the MoLA-Grad / MoLA-Router methods (bench/mola.py, methods/mola_*.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data.scenario import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup
from bench.models.backbones import ResNet
from bench.models.method import build_model, count_parameters, resolve_method
from bench.models.mola import (
    MoLAConv2d,
    adapter_param_count,
    add_mola,
    mixture,
    mola_layers,
    pc_ratio,
    twd_loss,
)
from bench.registry import weightings
from bench.run.engine import train

torch.set_num_threads(1)

BACKBONE = {"widths": (8, 8, 16, 16), "blocks": (1, 1, 1, 1), "strides": (1, 2, 2, 2)}
SETUP = TrainingSetup(epochs=1, batch_size=8, optimizer="sgd", lr=0.01, eval_batch_size=64)


class _Tiny(Scenario):
    def __init__(self, heterogeneity: str) -> None:
        self.name = f"tiny_{heterogeneity}"
        self.heterogeneity = heterogeneity  # type: ignore[assignment]


def _cls(name: str, classes: int = 3) -> TaskSpec:
    return TaskSpec(name, "classification", classes, ("accuracy",))


def multi_input_data(n: int = 16, tasks: int = 3, seed: int = 0) -> ScenarioData:
    g = torch.Generator().manual_seed(seed)
    specs = tuple(_cls(f"t{i}") for i in range(tasks))

    def split() -> Split:
        return Split({t.name: torch.randn(n, 3, 16, 16, generator=g) for t in specs},
                     {t.name: torch.randint(0, 3, (n,), generator=g) for t in specs})

    return ScenarioData("tiny_multi", "multi_input", specs, (3, 16, 16), split(), split(),
                        split(), SETUP, backbone="resnet", backbone_kwargs=dict(BACKBONE))


def single_input_data(n: int = 16, seed: int = 0) -> ScenarioData:
    g = torch.Generator().manual_seed(seed)
    specs = (TaskSpec("seg", "segmentation", 3, ("miou",)),
             TaskSpec("depth", "regression", 1, ("abs_err",)), _cls("cls"))

    def split() -> Split:
        return Split(torch.randn(n, 3, 16, 16, generator=g),
                     {"seg": torch.randint(0, 3, (n, 16, 16), generator=g),
                      "depth": torch.rand(n, 1, 16, 16, generator=g),
                      "cls": torch.randint(0, 3, (n,), generator=g)})

    return ScenarioData("tiny_single", "single_input", specs, (3, 16, 16), split(), split(),
                        split(), SETUP, backbone="resnet", backbone_kwargs=dict(BACKBONE))


def _randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in mola_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


# (1) all computation paths agree -----------------------------------------------------------------
@pytest.mark.parametrize("conv", [nn.Conv2d(6, 5, 3, 2, 1, bias=True), nn.Conv2d(6, 4, 1, 1, 0,
                                                                                   bias=False)])
def test_conv_paths_agree_for_one_hot_and_soft_mixtures(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    layer = MoLAConv2d(conv, num_adapters=3, rank=2).double()
    x = torch.randn(7, 6, 8, 8, dtype=torch.float64)
    plain = F.conv2d(x, layer.base.weight, layer.base.bias, conv.stride, conv.padding)
    ids = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    # untrained adapters (B = 0) change nothing, on every path
    for path in ("grouped", "split", "sum"):
        layer.path = path  # type: ignore[assignment]
        with mixture([layer], task_ids=ids):
            assert torch.equal(layer(x), plain) or torch.allclose(layer(x), plain, atol=1e-12)
    _randomise_adapters(layer)
    one_hot = F.one_hot(ids, 3).double()
    soft = torch.softmax(torch.randn(7, 3, dtype=torch.float64), dim=1)
    ref = layer.forward_grouped(x, one_hot)
    # per-sample reference from Eq. 1 directly
    direct = torch.cat([F.conv2d(x[n:n + 1], layer.base.weight + layer.delta(int(ids[n])),
                                 layer.base.bias, conv.stride, conv.padding) for n in range(7)])
    assert torch.allclose(ref, direct, atol=1e-10)
    assert not torch.allclose(ref, plain, atol=1e-3)
    assert torch.allclose(layer.forward_split(x, ids), ref, atol=1e-10)
    order = torch.argsort(ids, stable=True)  # rows grouped by task (the engine's fused batches)
    assert torch.allclose(layer.forward_split(x[order], ids[order]), ref[order], atol=1e-10)
    assert torch.allclose(layer.forward_sum(x, one_hot), ref, atol=1e-10)
    assert torch.allclose(layer.forward_single(x[ids == 2], 2), ref[ids == 2], atol=1e-10)
    for path in ("auto", "grouped", "split", "sum"):
        layer.path = path  # type: ignore[assignment]
        with mixture([layer], task_ids=ids):
            assert torch.allclose(layer(x), ref, atol=1e-10)
        with mixture([layer], task=1):
            assert torch.allclose(layer(x), layer.forward_grouped(x, F.one_hot(
                torch.ones(7, dtype=torch.long), 3).double()), atol=1e-10)
    soft_ref = layer.forward_grouped(x, soft)
    assert torch.allclose(layer.forward_sum(x, soft), soft_ref, atol=1e-10)
    layer.path = "auto"
    with mixture([layer], weights=soft):
        assert torch.allclose(layer(x), soft_ref, atol=1e-10)
    with pytest.raises(RuntimeError, match="outside"):
        layer(x)


def test_adapter_init_shapes_and_scaling() -> None:
    layer = MoLAConv2d(nn.Conv2d(4, 6, 3, padding=1), num_adapters=2, rank=4)
    assert layer.lora_A.shape == (2, 12, 12) and layer.lora_B.shape == (2, 18, 12)
    assert layer.scaling == 4.0 and float(layer.lora_B.detach().abs().sum()) == 0.0
    bound = 1 / math.sqrt(12)  # kaiming_uniform(a=√5) on fan_in 12
    assert float(layer.lora_A.detach().abs().max()) <= bound
    assert float(layer.lora_A.detach().std()) > bound / 4


# (2) gradient isolation ----------------------------------------------------------------------
def _adapter_grads(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.lora_A.grad.clone() if layer.lora_A.grad is not None else
             torch.zeros_like(layer.lora_A),
             layer.lora_B.grad.clone() if layer.lora_B.grad is not None else
             torch.zeros_like(layer.lora_B)) for layer in mola_layers(model)]


@pytest.mark.parametrize("path", ["auto", "grouped", "sum"])
def test_mola_grad_gradient_isolation_multi_input(path: str) -> None:
    torch.manual_seed(0)
    data = multi_input_data()
    model = build_model(resolve_method("mola_grad").with_overrides({"arch.path": path}), data)
    _randomise_adapters(model)
    xs = [data.train.inputs[t][:4] for t in data.task_names]  # type: ignore[index]
    ids = torch.cat([torch.full((4,), i) for i in range(3)])
    perm = torch.randperm(12)  # rows of tasks interleaved
    x, ids = torch.cat(xs)[perm], ids[perm]
    shared_w = model.encoder.stages[3][0].conv1.base.weight
    shared_grads = []
    # a batch mixing tasks in eval mode (in training mode, BatchNorm's batch statistics couple
    # the rows of a mixed batch; the per-task forward below is exact in training mode too)
    model.eval()
    for i, task in enumerate(data.task_names):
        model.zero_grad(set_to_none=True)
        out = model(x, task_ids=ids)
        out[task].square().sum().backward()
        for a_grad, b_grad in _adapter_grads(model):
            for j in range(3):
                nonzero = bool(a_grad[j].abs().sum() > 0) and bool(b_grad[j].abs().sum() > 0)
                assert nonzero == (j == i), (task, j)
        shared_grads.append(shared_w.grad.clone())
        assert float(shared_w.grad.abs().sum()) > 0
    assert not torch.allclose(shared_grads[0], shared_grads[1])
    model.train()
    for i, task in enumerate(data.task_names):
        model.zero_grad(set_to_none=True)
        model(x[ids == i], task_name=task)[task].square().sum().backward()
        for a_grad, b_grad in _adapter_grads(model):
            assert [bool(a_grad[j].abs().sum() > 0) for j in range(3)] == [j == i
                                                                           for j in range(3)]
            assert [bool(b_grad[j].abs().sum() > 0) for j in range(3)] == [j == i
                                                                           for j in range(3)]
    # the shared parameters (what gradient surgery sees) exclude the adapters
    share = {id(p) for p in model.get_share_params()}
    assert id(shared_w) in share
    assert not any(id(p) in share for layer in mola_layers(model)
                   for p in (layer.lora_A, layer.lora_B))


def test_mola_grad_gradient_isolation_single_input() -> None:
    torch.manual_seed(0)
    data = single_input_data()
    model = build_model(resolve_method("mola_grad"), data)
    _randomise_adapters(model)
    model.eval()  # the T paths share BatchNorm: batch statistics would couple them in training
    reps = model.encode(data.train.inputs[:4], None)  # type: ignore[index]
    assert isinstance(reps, list) and len(reps) == 3
    assert not torch.allclose(reps[0], reps[1])
    for i, task in enumerate(data.task_names):
        model.zero_grad(set_to_none=True)
        model(data.train.inputs[:4])[task].square().mean().backward()  # type: ignore[index]
        for a_grad, _ in _adapter_grads(model):
            assert [bool(a_grad[j].abs().sum() > 0) for j in range(3)] == [j == i
                                                                           for j in range(3)]
        assert float(model.encoder.stem[0].weight.grad.abs().sum()) > 0


# (3) TwD loss ------------------------------------------------------------------------------
def test_twd_loss_matches_hand_computation() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) * 3  # normalised inside
    mixed = twd_loss(f, torch.tensor([0, 0, 1, 1]))  # positives orthogonal: sim 0
    separated = twd_loss(f, torch.tensor([0, 1, 0, 1]))  # positives identical: sim 1
    assert float(mixed) == pytest.approx(math.log(2 + math.e), abs=1e-6)
    assert float(separated) == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)
    assert float(separated) < float(mixed)
    # three samples, two tasks: pairs (0,1) and (1,0) only; τ = 1
    f3 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    a0 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.0)))
    a1 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))
    assert float(twd_loss(f3, torch.tensor([0, 0, 1]))) == pytest.approx((a0 + a1) / 2, abs=1e-6)
    # temperature divides the similarities
    a0t = -math.log(math.exp(1.2) / (math.exp(1.2) + 1.0))
    a1t = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    assert float(twd_loss(f3, torch.tensor([0, 0, 1]), temperature=0.5)) == pytest.approx(
        (a0t + a1t) / 2, abs=1e-6)
    assert float(twd_loss(f3, torch.tensor([0, 1, 2]))) == 0.0  # no positive pair


def test_twd_lower_for_task_separated_features() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    centres = torch.randn(4, 32, generator=g) * 3
    separated = centres[labels] + 0.1 * torch.randn(32, 32, generator=g)
    mixed = torch.randn(32, 32, generator=g)
    assert float(twd_loss(separated, labels)) < float(twd_loss(mixed, labels)) - 0.5


# (4) MoLA-Router never reads task ids at inference -------------------------------------------
def test_mola_router_representation_ignores_task_ids() -> None:
    torch.manual_seed(0)
    data = multi_input_data()
    model = build_model(resolve_method("mola_router"), data)
    _randomise_adapters(model)
    x = torch.cat([data.test.inputs[t][:4] for t in data.task_names])  # type: ignore[index]
    ids = torch.arange(3).repeat_interleave(4)
    model.eval()
    ref = model.encode(x, None)
    assert torch.equal(model.encode(x, ids), ref)
    assert torch.equal(model.encode(x, ids[torch.randperm(12)]), ref)
    assert torch.equal(model.encode(x, torch.zeros(12, dtype=torch.long)), ref)
    assert not model._twd_store  # nothing kept at inference
    per_task = model(x[ids == 1], task_name="t1")["t1"]
    assert torch.allclose(model(x, task_ids=ids)["t1"], per_task, atol=1e-6)
    # training mode: the representation still ignores task ids; they feed the TwD loss only
    model.train()
    r1 = model.encode(x, ids)
    r2 = model.encode(x, ids[torch.randperm(12)])
    assert torch.equal(r1, r2)
    aux = model.auxiliary_loss()
    assert aux is not None and aux.requires_grad and not model._twd_store
    model.zero_grad(set_to_none=True)
    aux.backward()
    assert model.router.linear.weight.grad is not None and model.twd_head.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())


# (5) smoke training through the engine --------------------------------------------------------
@pytest.mark.parametrize("method", ["mola_grad", "mola_router", "mola_grad+pcgrad",
                                    "mola_router+pcgrad"])
@pytest.mark.parametrize("kind", ["multi_input", "single_input"])
def test_smoke_training(method: str, kind: str) -> None:
    if "+" in method and method.split("+")[1] not in weightings:
        pytest.skip("weighting not available")
    data = multi_input_data() if kind == "multi_input" else single_input_data()
    spec = resolve_method(method)
    result = train(spec, _Tiny(kind), data, SETUP, seed=0)
    assert result.steps == 2
    for metrics in result.test_metrics.values():
        assert all(math.isfinite(v) for v in metrics.values())
    assert result.param_breakdown is not None
    assert sum(result.param_breakdown.values()) == result.total_params
    if "router" in method:
        assert result.param_breakdown["router"] > 0
        expected = "fused" if kind == "multi_input" else "single_input"
        assert result.forward_mode == expected


def test_router_twd_accumulates_over_per_task_forwards() -> None:
    data = multi_input_data()
    model = build_model(resolve_method("mola_router"), data)
    model.train()
    for t in data.task_names:
        model(data.train.inputs[t][:4], task_name=t)  # type: ignore[index]
    labels = torch.cat([lab for _, lab in model._twd_store])
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert model.auxiliary_loss() is not None and model.auxiliary_loss() is None


def test_router_single_input_modes() -> None:
    data = single_input_data()
    per_task = build_model(resolve_method("mola_router"), data)
    per_task.train()
    reps = per_task.encode(data.train.inputs[:4], None)  # type: ignore[index]
    assert isinstance(reps, list) and len(reps) == 3
    assert per_task.router.linear.out_features == 3 * 3  # T mixtures of K = T adapters
    assert per_task.auxiliary_loss() is not None
    shared = build_model(resolve_method("mola_router").with_overrides(
        {"arch.single_input_mode": "shared", "arch.num_adapters": 2}), data)
    shared.train()
    assert torch.is_tensor(shared.encode(data.train.inputs[:4], None))  # type: ignore[index]
    assert shared.router.linear.out_features == 2 and shared.auxiliary_loss() is None


# (6) placement / rank parameter counts ---------------------------------------------------------
def _adapted_convs(encoder: ResNet, stages: list[int], shortcut: bool) -> list[nn.Conv2d]:
    """The convolutions MoLA adapts: the blocks' (conv1, conv2), the 1x1 projection shortcut
    only with ``adapt_shortcut`` (the reference adapts the block convolutions only)."""
    return [conv for s in stages for name, conv in encoder.stages[s].named_modules()
            if isinstance(conv, nn.Conv2d) and (shortcut or "shortcut" not in name)]


def _expected_adapters(encoder: ResNet, stages: list[int], ranks: dict[int, int], k_adapt: int,
                       shortcut: bool = False) -> int:
    total = 0
    for s in stages:
        for conv in _adapted_convs(encoder, [s], shortcut):
            total += k_adapt * adapter_param_count(conv.in_channels, conv.out_channels,
                                                   conv.kernel_size[0], ranks[s])
    return total


@pytest.mark.parametrize("overrides,stages,ranks", [
    ({}, [3], {3: 4}),
    ({"arch.adapt_shortcut": True}, [3], {3: 4}),
    ({"arch.placement": "all", "arch.rank": [1, 2, 3, 8]}, [0, 1, 2, 3],
     {0: 1, 1: 2, 2: 3, 3: 8}),
    ({"arch.placement": [1, 3], "arch.rank": {"1": 2, "3": 16}}, [1, 3], {1: 2, 3: 16}),
])
def test_parameter_counts_follow_placement_and_rank(overrides: dict, stages: list[int],
                                                    ranks: dict[int, int]) -> None:
    data = multi_input_data(n=4)
    plain = ResNet(3, **BACKBONE)
    backbone = sum(p.numel() for p in plain.parameters())
    shortcut = bool(overrides.get("arch.adapt_shortcut"))
    adapters = _expected_adapters(plain, stages, ranks, k_adapt=3, shortcut=shortcut)
    model = build_model(resolve_method("mola_grad").with_overrides(overrides), data)
    decoders = sum(p.numel() for p in model.decoders.parameters())
    trainable, total = count_parameters(model)
    assert trainable == total == backbone + adapters + decoders
    assert model.param_breakdown() == {"backbone": backbone, "adapters": adapters, "router": 0,
                                       "decoders": decoders}
    assert len(mola_layers(model)) == len(_adapted_convs(plain, stages, shortcut))
    adapted = {name for name, m in model.encoder.named_modules() if m in mola_layers(model)}
    assert any(".shortcut." in name for name in adapted) == shortcut
    if 3 in stages:  # Block4 of this ResNet has a projection shortcut to leave alone or adapt
        assert {"stages.3.0.conv1", "stages.3.0.conv2"} <= adapted


def test_add_mola_rejects_bad_placement_and_pc_ratio() -> None:
    with pytest.raises(ValueError, match="out of range"):
        add_mola(ResNet(3, **BACKBONE), 2, placement=[4])
    with pytest.raises(ValueError, match="one rank per placed stage"):
        add_mola(ResNet(3, **BACKBONE), 2, placement=[2, 3], rank=[4])
    enc = ResNet(3, **BACKBONE)
    assert len(add_mola(enc, 2, placement=["stem"])) == 1
    low = torch.zeros(8, 4, 3, 3)
    low[0, 0, 1, 1] = 1.0  # rank 1
    assert pc_ratio(low) == 1.0
    w = torch.diag(torch.tensor([100.0, 1e-4, 1e-4, 1e-4])).reshape(4, 4, 1, 1)
    assert pc_ratio(w) == 0.25
