"""MMoE, CGC and Cross-Stitch: fused multi-input passes equal per-task passes, gates are
distributions, parameters reach only the tasks they should, and encoder requirements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.models.method import IncompatibleError, build_model, check_compatible, resolve_method
from bench.run.engine import compute_losses

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["mmoe", "cgc", "cross_stitch", "single_task", "hps"])
@pytest.mark.parametrize("kind", ["domain", "multi_input"])
def test_fused_equals_per_task(name: str, kind: str, tiny_scenario) -> None:
    _, data = tiny_scenario(kind)
    torch.manual_seed(0)
    model = build_model(resolve_method(name), data).eval()
    index = {t: torch.arange(i, i + 5) for i, t in enumerate(data.task_names)}
    fused, out_f = compute_losses(model, data, data.train, index, fused=True)
    per_task, out_p = compute_losses(model, data, data.train, index, fused=False)
    assert torch.allclose(fused, per_task, atol=1e-5)
    for task in data.task_names:
        assert out_f[task].shape[0] == 5 and out_f[task].shape == out_p[task].shape
        assert torch.allclose(out_f[task], out_p[task], atol=1e-5)


def test_mmoe_gates_and_experts(tiny_scenario) -> None:
    _, data = tiny_scenario("single_input")
    model = build_model(resolve_method("mmoe"), data)
    assert len(model.experts_shared) == 3
    x = data.train.inputs[:4]
    for task in data.task_names:
        gates = model.gate(task, x)
        assert gates.shape == (4, 3) and torch.allclose(gates.sum(1), torch.ones(4))
    shared = {id(p) for p in model.get_share_params()}
    assert shared == {id(p) for p in model.experts_shared.parameters()}


def test_cgc_specific_experts_only_see_their_task(tiny_scenario) -> None:
    _, data = tiny_scenario("single_input")
    model = build_model(resolve_method("cgc"), data)
    out = model(data.train.inputs[:4])
    out["cls"].sum().backward()
    grad_of = {t: sum(float(p.grad.abs().sum()) for p in model.experts_specific[t].parameters()
                      if p.grad is not None) for t in data.task_names}
    assert grad_of["cls"] > 0 and grad_of["seg"] == 0 and grad_of["depth"] == 0
    assert sum(float(p.grad.abs().sum()) for p in model.experts_shared.parameters()) > 0


def test_cross_stitch_units(tiny_scenario) -> None:
    _, data = tiny_scenario("single_input")
    model = build_model(resolve_method("cross_stitch"), data)
    enc = model.encoder
    assert len(enc.columns) == 3 and len(enc.alpha) == len(enc.columns[0].stages)
    for alpha in enc.alpha:
        assert torch.allclose(alpha.sum(1), torch.ones(3))
    # alpha = I: columns are independent networks; task 0's loss reaches only column 0
    with torch.no_grad():
        for alpha in enc.alpha:
            alpha.copy_(torch.eye(3))
    out = model(data.train.inputs[:4])
    out["cls"].sum().backward()
    grads = [sum(float(p.grad.abs().sum()) for p in col.parameters() if p.grad is not None)
             for col in enc.columns]
    assert grads[0] > 0 and grads[1] == 0 and grads[2] == 0
    assert all(a.grad is not None and float(a.grad.abs().sum()) > 0 for a in enc.alpha)


def test_cross_stitch_needs_a_staged_encoder(tiny_scenario) -> None:
    scenario, _ = tiny_scenario("single_input")
    scenario.backbone = "vit"
    with pytest.raises(IncompatibleError, match="staged"):
        check_compatible(resolve_method("cross_stitch"), scenario)
    check_compatible(resolve_method("mmoe"), scenario)  # any encoder
    cross_stitch = type(build_model(resolve_method("cross_stitch"),
                                    tiny_scenario("domain")[1]).encoder)
    with pytest.raises(TypeError, match="staged encoder"):
        cross_stitch([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_cgc_per_task_forward_leaves_other_tasks_experts_alone(tiny_scenario) -> None:
    _, data = tiny_scenario("multi_input")
    model = build_model(resolve_method("cgc"), data).train()
    other = {k: v.clone() for k, v in model.state_dict().items()
             if k.startswith("experts_specific.b.")}
    out = model(data.train.inputs["a"][:4], task_name="a")
    assert list(out) == ["a"]
    state = model.state_dict()
    assert other and all(torch.equal(v, state[k]) for k, v in other.items())
