"""The ``paper`` profile runs the papers' own models: MTLoRA on the ImageNet-1k Swin-T with its
Table 1 ranks, every PASCAL-Context method on that Swin-T; weights that cannot be had stop the
plan before any training, with one line saying how to provide them."""

from __future__ import annotations

import pytest
import torch

import bench.models.backbones as B
from bench.cli import main
from bench.data.scenario import ScenarioData, Split, TrainingSetup
from bench.models.method import build_model, count_parameters, resolve_method, resolve_run_method
from bench.registry import scenarios
from bench.run.plan import WeightsMissingError, expand

PAPER_MTLORA = {"rank": 16, "task_rank": 4, "decoder_channels": [18, 36, 72, 144]}


def _identity(method: str, profile: str, overrides: dict | None = None) -> dict:
    import json

    return json.loads(json.dumps(resolve_run_method(method, overrides, profile).identity()))


@pytest.fixture
def weights_available(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend every pretrained weight is cached; returns the names that were asked for."""
    asked: list[str] = []

    def available(weights: str) -> None:
        asked.append(weights)
        return None

    monkeypatch.setattr(B, "_hub_problem", available)
    return asked


def test_mtlora_paper_scale_is_the_papers_model_and_user_overrides_win() -> None:
    paper = _identity("mtlora", "paper")
    assert paper["backbone"] == "swin_t" and paper["backbone_kwargs"] == {"pretrained": True}
    assert {k: paper["arch_kwargs"][k] for k in PAPER_MTLORA} == PAPER_MTLORA
    assert _identity("mtlora_plus", "paper")["arch_kwargs"]["rank"] == 4
    # the user's --set comes last
    assert _identity("mtlora", "paper", {"arch.rank": 64})["arch_kwargs"]["rank"] == 64
    ckpt = _identity("mtlora", "paper", {"backbone.checkpoint": "swin.pth"})["backbone_kwargs"]
    assert ckpt == {"pretrained": True, "checkpoint": "swin.pth"}  # the file wins when built
    # an encoder's keywords apply whatever the order of the --set flags
    either = resolve_method("hps").with_overrides({"backbone.pretrained": True,
                                                   "backbone.name": "swin_t"})
    assert (either.backbone, either.backbone_kwargs) == ("swin_t", {"pretrained": True})
    # other profiles, and architectures without a paper scale, are unchanged
    assert resolve_run_method("mtlora", None, "default").identity() == \
        resolve_method("mtlora").identity()
    assert resolve_run_method("hps", None, "paper").identity() == resolve_method("hps").identity()


def _pascal_shapes(size: int = 448) -> ScenarioData:
    """PASCAL-Context's paper-profile model inputs, without data."""
    import sys

    tasks = sys.modules[scenarios.get("pascal_context").__module__].TASKS
    empty = Split(torch.zeros(0, 3, size, size), {t.name: torch.zeros(0) for t in tasks})
    scen = scenarios.get("pascal_context")()
    return ScenarioData("pascal_context", "single_input", tasks, (3, size, size), empty, empty,
                        empty, TrainingSetup(epochs=1, batch_size=2),
                        backbone=scen.backbone_of("paper"),
                        backbone_kwargs=scen.backbone_kwargs_of("paper"))


@pytest.mark.parametrize("method,expected", [("mtlora", 4.95), ("mtlora_plus", 2.57)])
def test_paper_scale_mtlora_on_pascal_reproduces_table1_with_the_pretrained_swin(
        method: str, expected: float, monkeypatch) -> None:
    """Under the paper profile, MTLoRA on PASCAL-Context is Table 1's model: its trainable
    count, and a frozen encoder holding the pretrained weights."""
    import timm

    real_create = timm.create_model
    calls: list[tuple[str, bool]] = []
    served: list[torch.nn.Module] = []

    def fake_create(name: str, pretrained: bool = False, **kwargs):
        calls.append((name, pretrained))
        torch.manual_seed(123)  # stands in for the downloaded ImageNet weights
        served.append(real_create("swin_tiny_patch4_window7_224", pretrained=False, **kwargs))
        return served[-1]

    monkeypatch.setattr(timm, "create_model", fake_create)
    model = build_model(resolve_run_method(method, None, "paper"), _pascal_shapes())
    assert calls == [("swin_tiny_patch4_window7_224.ms_in1k", True)]
    trainable, _ = count_parameters(model)
    assert abs(trainable / 1e6 - expected) <= 0.01, trainable
    (source,) = served
    swin = model.encoder.backbone.model
    assert swin.patch_embed.proj.weight.shape == (96, 3, 4, 4)
    assert torch.equal(swin.patch_embed.proj.weight, source.patch_embed.proj.weight)
    qkv = swin.layers[2].blocks[3].attn.qkv
    assert torch.equal(qkv.base.weight, source.layers[2].blocks[3].attn.qkv.weight)
    assert not qkv.base.weight.requires_grad  # frozen, adapted by TA-LoRA


def test_pascal_paper_models_share_mtloras_encoder(weights_available) -> None:
    plan = expand(None, ["pascal_context"], [0], "paper", run_all=True, require_data=False)
    methods = {run.method for run in plan.runs}
    assert {"hps", "single_task", "mola_grad", "mtlora"} <= methods
    assert "cross_stitch" not in methods  # needs a convolutional encoder: skipped, with why
    assert any(m == "cross_stitch" and "swin_t" in why for m, _, why in plan.skipped)
    assert "swin_tiny_patch4_window7_224.ms_in1k" in weights_available
    hps = next(r for r in plan.runs if r.method == "hps")
    assert hps.config["method_identity"].get("backbone") is None  # the scenario's Swin-T
    smoke = expand(None, ["pascal_context"], [0], "smoke", run_all=True, require_data=False)
    assert "cross_stitch" in {run.method for run in smoke.runs}  # narrow ResNet there


def test_unavailable_weights_stop_the_plan_before_training(monkeypatch, tmp_path, capsys
                                                           ) -> None:
    monkeypatch.setattr(B, "_hub_problem", lambda weights: f"{weights} not cached, hub down")
    with pytest.raises(WeightsMissingError, match="mtlora on digits_scene: .*hub down"):
        expand(["mtlora"], ["digits_scene"], [0], "default",
               overrides={"backbone.name": "swin_t", "backbone.pretrained": True})
    # --all: the run is skipped with the reason; --dry-run: planned and flagged
    plan = expand(["mtlora", "hps"], None, [0], "default", overrides={
        "backbone.pretrained": True, "backbone.name": "swin_t"})
    assert all(r.method != "mtlora" for r in plan.runs)
    assert any("weights unavailable" in why for _, _, why in plan.skipped)
    results = tmp_path / "results"
    code = main(["run", "--method", "mtlora", "--scenario", "digits_scene", "--seeds", "0",
                 "--set", "backbone.name=swin_t", "--set", "backbone.pretrained=true",
                 "--results-dir", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hub down" in err[0], err
    assert not results.exists()
    code = main(["run", "--method", "mtlora", "--scenario", "digits_scene", "--seeds", "0",
                 "--set", "backbone.name=swin_t", "--set", "backbone.pretrained=true",
                 "--results-dir", str(results), "--dry-run"])
    assert code == 0 and "weights missing for mtlora on digits_scene" in capsys.readouterr().err


def test_weights_problem_cases(tmp_path, monkeypatch) -> None:
    assert B.weights_problem("swin_t", {}) is None
    missing = tmp_path / "nope.pth"
    assert "does not exist" in B.weights_problem("swin_t", {"checkpoint": str(missing)})
    missing.write_bytes(b"x")
    assert B.weights_problem("swin_t", {"checkpoint": str(missing), "pretrained": True}) is None
    assert "no pretrained weights" in B.weights_problem("resnet", {"pretrained": True})
    # nothing cached and the hub offline: the reason and the two ways out
    B._hub_problem.cache_clear()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    problem = B.weights_problem("swin_t", {"pretrained": True})
    B._hub_problem.cache_clear()
    assert "not in the Hugging Face cache" in problem and "backbone.checkpoint=FILE" in problem


def test_pretrained_weights_that_cannot_be_fetched_are_one_line(monkeypatch) -> None:
    import timm

    from bench.models.backbones import PretrainedWeightsError
    from bench.models.mtlora import swin_t

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore details")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        swin_t(input_shape=(3, 32, 32), pretrained=True, depths=(1, 1, 1, 1), embed_dim=24,
               num_heads=(1, 1, 1, 1))
    message = str(err.value)
    assert "\n" not in message and "swin_tiny_patch4_window7_224.ms_in1k" in message
    assert "backbone.checkpoint=FILE" in message


def test_resnet18_loads_torchvision_weights_exactly(tmp_path) -> None:
    """ImageNet weights in torchvision's layout (timm's ``resnet18.tv_in1k``) map onto our
    ResNet-18: the same features as the source model, from a pretrained name or a file."""
    import timm

    torch.manual_seed(7)
    source = timm.create_model("resnet18", pretrained=False).eval()
    state = source.state_dict()
    ours = B.build_backbone("resnet18").eval()
    B.load_torchvision_resnet(ours, state, "test")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), source.forward_features(x), atol=1e-5)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    from_file = B.build_backbone("resnet18", checkpoint=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(from_file(x), ours(x))
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        B.load_torchvision_resnet(ours, {"conv1.weight": state["conv1.weight"]}, "partial")


def test_timm_resnet18_refuses_empty_or_unrelated_checkpoints(tmp_path) -> None:
    """As the Swin and torchvision loaders: every tensor found, nothing left over."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # with its fc
    good = tmp_path / "good.pth"
    torch.save({"state_dict": state}, good)
    net = B.build_backbone("timm_resnet18", checkpoint=str(good))
    assert torch.equal(net.stem[0].weight, state["conv1.weight"])
    for name, content, says in (
            ("empty.pth", {}, "holds no state dict"),
            ("unrelated.pth", {"encoder.weight": torch.zeros(3)}, "not a timm resnet18"),
            ("partial.pth", {"conv1.weight": state["conv1.weight"]}, "missing"),
            ("other_shape.pth", {**state, "conv1.weight": torch.zeros(1)}, "does not fit")):
        path = tmp_path / name
        torch.save(content, path)
        with pytest.raises(ValueError, match=says):
            B.build_backbone("timm_resnet18", checkpoint=str(path))


def test_paper_profiles_start_from_the_references_weights() -> None:
    """MoLA's reference initialises ResNets from ImageNet for MedMNIST, VLCS, Office-Home and
    NYUv2, and trains RadImageNet's from scratch."""
    pretrained = {name: scenarios.get(name)().backbone_kwargs_of("paper").get("pretrained")
                  for name in ("medmnist_mola", "vlcs", "officehome", "nyuv2", "radimagenet",
                               "pascal_context")}
    assert pretrained == {"medmnist_mola": True, "vlcs": True, "officehome": True,
                          "nyuv2": True, "radimagenet": None, "pascal_context": True}
    for name in pretrained:
        assert "pretrained" not in scenarios.get(name)().backbone_kwargs_of("smoke")


def _lrs(setup: TrainingSetup) -> list[float]:
    from bench.run.engine import make_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=setup.lr)
    scheduler = make_scheduler(optimizer, setup)
    lrs = []
    for _ in range(setup.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # as the engine: a step, then the schedule
        if scheduler is not None:
            scheduler.step()
    return lrs


def test_schedules_warmup_cosine_floor_and_step() -> None:
    from bench.run.engine import make_scheduler

    plain = TrainingSetup(epochs=10, batch_size=2, lr=0.1, scheduler="cosine")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(make_scheduler(optimizer, plain),
                      torch.optim.lr_scheduler.CosineAnnealingLR)  # as the records were made
    mtlora = TrainingSetup(epochs=30, batch_size=2, lr=1e-3, scheduler="cosine",
                           warmup_epochs=10, min_lr=1e-5)
    lrs = _lrs(mtlora)
    assert lrs[0] == pytest.approx(1e-6) and lrs[5] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert lrs[10] == pytest.approx(1e-3)  # warm-up done: the cosine starts at the base lr
    assert lrs[20] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 1e-5
    step = TrainingSetup(epochs=6, batch_size=2, lr=1.0, scheduler="step", step_size=2,
                         gamma=0.5)
    assert _lrs(step) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="step_size"):
        _lrs(TrainingSetup(epochs=2, batch_size=2, scheduler="step"))


def test_new_training_settings_keep_old_config_keys_and_can_be_set(tiny_scenario) -> None:
    from bench.run.plan import build_config

    setup = TrainingSetup(epochs=1, batch_size=2)
    assert "grad_clip" not in setup.to_dict() and "warmup_epochs" not in setup.to_dict()
    config = build_config("hps", "digits_tasks", 0, "smoke", {"train.grad_clip": 1.0})
    assert config["training"]["grad_clip"] == 1.0
    with pytest.raises(ValueError, match="train.clip.*did you mean train.grad_clip"):
        build_config("hps", "digits_tasks", 0, "smoke", {"train.clip": 1.0})


def test_gradient_clipping_bounds_each_step(tiny_scenario, monkeypatch) -> None:
    """The engine clips the trainable gradients' norm before every optimizer step when
    ``grad_clip`` is set, and never otherwise."""
    from dataclasses import replace as dc_replace

    from bench.run.engine import train

    scen, data = tiny_scenario("multi_input")
    spec = resolve_method("hps")
    real_clip = torch.nn.utils.clip_grad_norm_
    calls: list[tuple[int, float, float]] = []

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        total = real_clip(params, max_norm, *args, **kwargs)
        after = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        calls.append((len(params), max_norm, float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    result = train(spec, scen, data, dc_replace(data.training, grad_clip=0.25), seed=0)
    assert len(calls) == result.steps > 0
    assert all(n == sum(1 for p in build_model(spec, data).parameters() if p.requires_grad)
               and norm == 0.25 and after <= 0.25 + 1e-6 for n, norm, after in calls)
    calls.clear()
    train(spec, scen, data, data.training, seed=0)
    assert calls == []


# ------------------------------------------------------------------ pooled sampling (MoLA)
def test_pooled_sampler_passes_over_the_union_once_per_epoch() -> None:
    from bench.run.engine import PooledSampler

    sizes = [5, 1, 10]
    sampler = PooledSampler(sizes, torch.Generator().manual_seed(0))
    seen: list[set[int]] = [set(), set(), set()]
    counts = []
    for _ in range(4):  # 16 samples, batch 4: one epoch
        parts = sampler.next(4)
        counts.append([len(p) for p in parts])
        for t, part in enumerate(parts):
            assert all(0 <= int(i) < sizes[t] for i in part)
            assert not seen[t] & set(part.tolist())  # no sample twice in an epoch
            seen[t] |= set(part.tolist())
    assert [len(s) for s in seen] == sizes and all(sum(c) == 4 for c in counts)
    assert any(0 in c for c in counts)  # a small task is absent from some batches


def test_absent_tasks_get_a_zero_loss_and_shares_sum_to_the_batch_mean(tiny_scenario) -> None:
    from bench.run.engine import batch_losses

    _, data = tiny_scenario("multi_input")
    torch.manual_seed(0)
    model = build_model(resolve_method("hps"), data)
    xs = {"a": data.train.inputs["a"][:6], "b": data.train.inputs["b"][:0]}
    ys = {"a": data.train.targets["a"][:6], "b": data.train.targets["b"][:0]}
    losses, out = batch_losses(model, data, (xs, ys), fused=True)
    assert set(out) == {"a"} and float(losses[1].detach()) == 0.0 and losses.requires_grad
    losses.sum().backward()  # every weighting can differentiate every task's loss
    xs["b"], ys["b"] = data.train.inputs["b"][:2], data.train.targets["b"][:2]
    model.zero_grad()
    shared, out = batch_losses(model, data, (xs, ys), fused=True, share=True)
    per_row = torch.cat([torch.nn.functional.cross_entropy(out[t], ys[t], reduction="none")
                         for t in ("a", "b")])
    assert float(shared.sum().detach()) == pytest.approx(float(per_row.mean().detach()), rel=1e-6)


@pytest.mark.parametrize("method", ["hps", "single_task", "pcgrad", "mgda", "cagrad", "mmoe",
                                    "cgc", "cross_stitch", "uniform", "mola_grad",
                                    "mola_router", "mtlora"])
def test_every_method_trains_on_pooled_batches(tiny_scenario, method: str) -> None:
    from dataclasses import replace as dc_replace

    from bench.run.engine import train

    scen, data = tiny_scenario("multi_input")
    small = dc_replace(data, train=Split({"a": data.train.inputs["a"][:14],
                                          "b": data.train.inputs["b"][:2]},
                                         {"a": data.train.targets["a"][:14],
                                          "b": data.train.targets["b"][:2]}))
    setup = dc_replace(data.training, batch_size=4, sampling="pooled", loss_share=True)
    result = train(resolve_method(method), scen, small, setup, seed=0)
    assert result.steps == 16 // 4  # one pass over the 16 pooled samples
    assert all(torch.isfinite(torch.tensor(h["val_task_losses"])).all() for h in result.history)


def test_representation_gradient_weightings_refuse_pooled_batches() -> None:
    from bench.models.method import IncompatibleError, check_compatible

    medmnist = scenarios.get("medmnist_mola")()
    assert medmnist.setup("paper").sampling == "pooled"
    with pytest.raises(IncompatibleError, match="pooled batches.*train.sampling=per_task"):
        check_compatible(resolve_run_method("mgda_ub", None, "paper"), medmnist, "paper")
    check_compatible(resolve_run_method("mgda_ub", {"train.sampling": "per_task"}, "paper"),
                     medmnist, "paper")
    check_compatible(resolve_run_method("mgda_ub", None, "smoke"), medmnist, "smoke")
