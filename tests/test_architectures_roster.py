"""MTAN, PLE, DSelect-k and LTB (issue 14): hand-checked parameter counts, each architecture's
defining behaviour, gradient isolation where the paper claims it, the fused multi-input pass and
planning-time refusals. Smoke training of every method is in ``test_methods_smoke.py``.

Parameter counts use the tiny single-input scenario of ``conftest.py`` (input 1x8x8, 3 tasks,
ResNet widths 4-4-8-8, one basic block per stage, strides 1-2-1-2). Its encoder has 2,884
parameters: stem 36 + 8 (3x3 conv 1->4, BN), stage 0 304 (two 3x3 convs 4->4, two BN),
stage 1 328 (304 + 1x1 shortcut 16 + BN 8), stage 2 944 (288 + 16 + 576 + 16 + shortcut
32 + 16), stage 3 1,264 (576 + 16 + 576 + 16 + shortcut 64 + 16). Its stage outputs are
4x8x8, 4x4x4, 8x4x4 and 8x2x2.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from bench.models.method import IncompatibleError, build_model, check_compatible, resolve_method
from bench.run.engine import compute_losses, train

torch.set_num_threads(1)

ROSTER = ("mtan", "ple", "dselect_k", "ltb")
ENCODER = 2884  # the tiny encoder, see the module docstring


def body_params(model: nn.Module) -> int:
    """Parameters outside the task decoders."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("decoders."))


def grad_sum(module: nn.Module | list) -> float:
    params = module.parameters() if isinstance(module, nn.Module) else module
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def build(name: str, tiny_scenario, kind: str = "single_input", **overrides):
    _, data = tiny_scenario(kind)
    spec = resolve_method(name).with_overrides({f"arch.{k}": v for k, v in overrides.items()})
    torch.manual_seed(0)
    return build_model(spec, data), data


@pytest.mark.parametrize("name", ROSTER)
@pytest.mark.parametrize("kind", ["domain", "multi_input"])
def test_fused_equals_per_task(name: str, kind: str, tiny_scenario) -> None:
    model, data = build(name, tiny_scenario, kind)
    model.eval()
    index = {t: torch.arange(i, i + 5) for i, t in enumerate(data.task_names)}
    fused, out_f = compute_losses(model, data, data.train, index, fused=True)
    per_task, out_p = compute_losses(model, data, data.train, index, fused=False)
    assert torch.allclose(fused, per_task, atol=1e-5)
    for task in data.task_names:
        assert out_f[task].shape[0] == 5 and torch.allclose(out_f[task], out_p[task], atol=1e-5)


@pytest.mark.parametrize(("name", "overrides", "expected"), [
    # 3 tasks x 608 attention parameters (per stage 56, 72, 240, 240) + f: 152 + 304 + 592
    ("mtan", {}, ENCODER + 3 * 608 + 1048),
    # 4 expert columns + task gates (65 + 257 + 65 + 129) x 2 outputs x 3 tasks
    # + shared gates (65 + 257 + 65) x 4 outputs
    ("ple", {}, 4 * ENCODER + 3 * 1032 + 1548),
    # one level: CGC's model (4 encoders, one Linear(64, 2) gate per task)
    ("ple", {"num_levels": 1}, 4 * ENCODER + 3 * 130),
    ("cgc", {}, 4 * ENCODER + 3 * 130),
    # 4 experts + per task z: Linear(64, 2 selectors x 2 bits) 260, alpha: Linear(64, 2) 130
    ("dselect_k", {}, 4 * ENCODER + 3 * 390),
    # shared stem 44 + 3 copies of the 4 stages (2,840 each) + 3 x (3 x 3) branch logits
    ("ltb", {}, 44 + 3 * 2840 + 27),
    # nodes 1-2-2-3: stages 0..3 in 1, 2, 2, 3 copies; logits 2x1 + 2x2 + 3x2
    ("ltb", {"nodes": [1, 2, 2, 3]}, 44 + 304 + 2 * 328 + 2 * 944 + 3 * 1264 + 12),
])
def test_parameter_counts(name: str, overrides: dict, expected: int, tiny_scenario) -> None:
    model, _ = build(name, tiny_scenario, **overrides)
    assert body_params(model) == expected


def test_mtan_on_resnet18(tiny_scenario) -> None:
    """ResNet-18 (two blocks per stage: u = first block's output): attention per task
    8,576 + 49,920 + 198,144 + 789,504 (3c² + 6c for c = 128, 256, 512) and f
    73,984 + 295,424 + 1,180,672 over the 11,176,512 of the encoder."""
    _, data = tiny_scenario("multi_input")
    data = replace(data, input_shape=(3, 32, 32), backbone="resnet18", backbone_kwargs={})
    torch.manual_seed(0)
    model = build_model(resolve_method("mtan"), data).eval()
    assert body_params(model) == 11_176_512 + 2 * 1_046_144 + 1_550_080
    feats, masks = model.attend(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    assert [f.shape for f in feats] == [(2, 512, 1, 1)] * 2
    assert [m.shape[1] for m in masks[0]] == [64, 128, 256, 512]


def test_mtan_masks_are_per_task_in_unit_interval(tiny_scenario) -> None:
    model, data = build("mtan", tiny_scenario)
    x = data.train.inputs[:4]
    feats, masks = model.attend(x, None)
    assert len(masks) == 3 and all(len(m) == 4 for m in masks)
    for task_masks in masks:
        for mask, channels in zip(task_masks, (4, 4, 8, 8)):
            assert mask.shape[:2] == (4, channels)
            assert float(mask.detach().min()) >= 0.0 and float(mask.detach().max()) <= 1.0
    assert not torch.allclose(masks[0][-1], masks[1][-1])  # each task has its own masks
    # the attended feature is the mask times the shared feature of the stage (Eq. 1)
    shared = model.encoder(x)
    assert torch.allclose(feats[0], masks[0][-1] * shared)


def test_mtan_gradient_isolation(tiny_scenario) -> None:
    model, data = build("mtan", tiny_scenario)
    model(data.train.inputs[:4])["cls"].sum().backward()
    attention = dict(zip(data.task_names, model.attention))
    assert grad_sum(attention["cls"]) > 0
    assert grad_sum(attention["seg"]) == 0 and grad_sum(attention["depth"]) == 0
    assert grad_sum(model.encoder) > 0 and grad_sum(model.shared_f) > 0
    shared = {id(p) for p in model.get_share_params()}
    assert shared == {id(p) for p in [*model.encoder.parameters(), *model.shared_f.parameters()]}


def test_mtan_per_task_forward_leaves_other_attention_alone(tiny_scenario) -> None:
    model, data = build("mtan", tiny_scenario, "multi_input")
    model.train()
    other = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("attention.1.")}
    assert list(model(data.train.inputs["a"][:4], task_name="a")) == ["a"]
    state = model.state_dict()
    assert other and all(torch.equal(v, state[k]) for k, v in other.items())


def test_ple_levels_and_gates(tiny_scenario) -> None:
    model, data = build("ple", tiny_scenario)
    assert model.num_levels == 4 and model.groups == [[0], [1], [2], [3]]
    task_gates, shared_gates = model.gates(data.train.inputs[:4])
    assert len(shared_gates) == 3 and all(len(g) == 4 for g in task_gates)
    assert all(g.shape == (4, 2) for gates in task_gates for g in gates)  # own + shared
    assert all(g.shape == (4, 4) for g in shared_gates)  # 3 tasks' experts + shared
    for g in [*shared_gates, *(g for gates in task_gates for g in gates)]:
        assert torch.allclose(g.sum(1), torch.ones(4))
    two, _ = build("ple", tiny_scenario, num_levels=2)
    assert two.num_levels == 2 and two.groups == [[0, 1], [2, 3]] and len(two.gate_shared) == 1
    for bad in (0, 5):
        with pytest.raises(ValueError, match="num_levels"):
            build("ple", tiny_scenario, num_levels=bad)


def test_ple_gradients_follow_the_paper(tiny_scenario) -> None:
    """Task 'cls' loss: the other tasks' last-level experts and gates get nothing; their
    lower levels do, through the shared gate (PLE's design)."""
    model, data = build("ple", tiny_scenario)
    model(data.train.inputs[:4])["cls"].sum().backward()
    last = model.num_levels - 1
    for task in ("seg", "depth"):
        columns = model.experts_specific[task]
        gates = model.gate_specific[task]
        assert grad_sum(columns[0][last]) == 0 and grad_sum(gates[last]) == 0
        assert grad_sum(columns[0][0]) > 0 and grad_sum(gates[0]) > 0
    assert grad_sum(model.experts_specific["cls"][0][last]) > 0
    assert grad_sum(model.get_share_params()) > 0


def test_dselect_k_smooth_step_and_gates(tiny_scenario) -> None:
    from bench.registry import architectures

    module = __import__(architectures.get("dselect_k").cls.__module__, fromlist=["x"])
    t = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    s = module.smooth_step(t, gamma=1.0)
    assert s.tolist() == pytest.approx([0, 0, 0.15625, 0.5, 0.84375, 1, 1])
    model, data = build("dselect_k", tiny_scenario)
    x = data.train.inputs[:6]
    for task in data.task_names:
        gate = model.gate(task, x)
        assert gate.shape == (6, 4) and float(gate.detach().min()) >= 0
        assert torch.allclose(gate.sum(1), torch.ones(6))  # 4 experts: a power of two
    # saturated binary logits (|z| >= γ/2): every selector is one-hot, at most k = 2 experts
    gate = model.gate_specific["cls"]
    with torch.no_grad():
        gate.z_logits.weight.zero_()
        gate.z_logits.bias.copy_(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # experts 2 ("10"), 1
    weights, selectors = gate(x)
    assert torch.equal(selectors[0], torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0]]))
    assert int((weights > 0).sum(1).max()) <= 2 and torch.allclose(weights.sum(1), torch.ones(6))


def test_dselect_k_training_reaches_exact_sparsity(tiny_scenario) -> None:
    """The smooth-step reaches 0 and 1 at finite logits: fitting a target that only expert 3
    reproduces, with the entropy penalty, makes every selector exactly one-hot, so at most
    k = 2 weights are non-zero, and expert 3 carries almost all the weight."""
    from bench.registry import architectures

    module = __import__(architectures.get("dselect_k").cls.__module__, fromlist=["x"])
    torch.manual_seed(0)
    gate = module.DSelectKGate(input_size=5, num_experts=4, k=2, gamma=1.0)
    x = torch.randn(16, 5)
    experts = torch.arange(4.0)  # expert l outputs l
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(300):
        weights, selectors = gate(x)
        loss = ((weights @ experts - 3.0) ** 2).mean() + gate.regulariser(selectors, 1e-2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weights, selectors = gate(x)
    assert set(selectors.unique().tolist()) == {0.0, 1.0}  # binary: one expert per selector
    assert int((weights > 0).sum(1).max()) <= 2 and float(weights[:, 3].min()) > 0.99


def test_dselect_k_regularisers(tiny_scenario) -> None:
    model, data = build("dselect_k", tiny_scenario)  # 4 experts, no entropy term: no penalty
    model.train()
    model(data.train.inputs[:4])
    assert model.auxiliary_loss() is None
    model, data = build("dselect_k", tiny_scenario, num_experts=3, entropy_reg=1e-3)
    model.train()
    model(data.train.inputs[:4])
    aux = model.auxiliary_loss()
    # 3 tasks x 4 rows x 2 selectors: 1 / (reachable mass) >= 1 each, plus the entropy term
    assert aux is not None and float(aux.detach()) >= 24 and aux.requires_grad
    assert model.auxiliary_loss() is None  # consumed
    model.eval()
    model(data.train.inputs[:4])
    assert model.auxiliary_loss() is None  # no penalty outside training
    scenario, data = tiny_scenario("multi_input")
    spec = resolve_method("dselect_k").with_overrides({"arch.num_experts": 3,
                                                       "arch.entropy_reg": 1e-6})
    result = train(spec, scenario, data, data.training, seed=0)
    assert result.steps == 2 and all(v == v for m in result.test_metrics.values()
                                     for v in m.values())


def test_ltb_branching_distribution_and_trees(tiny_scenario) -> None:
    model, data = build("ltb", tiny_scenario)
    probs = model.branch_probabilities()
    assert [p.shape for p in probs] == [(3, 3)] * 3
    assert all(torch.allclose(p.sum(-1), torch.ones(3)) for p in probs)
    for choice in model.sample_tree():  # a hard tree: exactly one parent per node
        assert set(choice.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(choice.sum(-1), torch.ones(3))
    with torch.no_grad():
        model.branch_logits[0].copy_(torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]]))
    assert model.tree()[0] == [0, 0, 2]
    model.eval()  # evaluation uses the derived tree, deterministically
    x = data.train.inputs[:4]
    first = model(x)
    assert all(torch.equal(first[t], v) for t, v in model(x).items())


def test_ltb_temperature_schedule(tiny_scenario) -> None:
    model, _ = build("ltb", tiny_scenario, tau0=4.0)
    model.train()
    temps = [model.temperature]
    for _ in range(3):  # the engine: evaluation at the end of each epoch, then training again
        model.eval()
        model.train()
        temps.append(model.temperature)
    assert temps == pytest.approx([4.0, 4.0 / 2**0.5, 4.0 / 3**0.5, 2.0])
    warm, _ = build("ltb", tiny_scenario, warmup_epochs=1)
    warm.train()  # epoch 0: every node gets the mean of its parents; epoch 1: a sampled tree
    assert all(torch.equal(c, torch.full((3, 3), 1 / 3)) for c in warm._choices())
    warm.eval()
    warm.train()
    assert all(torch.equal(c.sum(-1), torch.ones(3)) and int((c > 0).sum()) == 3
               for c in warm._choices())


def test_ltb_gradients_follow_the_tree(tiny_scenario) -> None:
    """In the tree where every node hangs from node 0 of the stage above, task 'cls' (leaf 0)
    reaches node 0 of every stage and no other node; the logits learn through the relaxation."""
    model, data = build("ltb", tiny_scenario)
    x = data.train.inputs[:4]
    chain = [torch.tensor([[1.0, 0, 0]] * 3) for _ in model.branch_logits]
    leaves = model.forward_tree(x, chain)
    model.decoders["cls"](leaves[0]).sum().backward()
    for layer in model.layers:
        assert grad_sum(layer[0]) > 0
        assert all(grad_sum(node) == 0 for node in layer[1:])
    model.zero_grad()
    model.train()
    model(x)["cls"].sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.branch_logits)
    shared = {id(p) for p in model.get_share_params()}
    assert not shared & {id(p) for p in model.layers[-1].parameters()}  # leaves: task-specific
    with pytest.raises(ValueError, match="nodes"):
        build("ltb", tiny_scenario, nodes=[3, 3, 3, 2])


@pytest.mark.parametrize("name", ["mtan", "ple", "ltb"])
def test_staged_encoder_required_at_planning_time(name: str, tiny_scenario) -> None:
    scenario, _ = tiny_scenario("single_input")
    scenario.backbone = "vit"
    with pytest.raises(IncompatibleError, match="staged") as err:
        check_compatible(resolve_method(f"{name}+pcgrad"), scenario)
    assert "\n" not in str(err.value)
    check_compatible(resolve_method("dselect_k"), scenario)  # any encoder, as MMoE
