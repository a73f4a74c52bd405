"""MTLoRA / MTLoRA+: layer maths, merge, trainable sets, Table 1 counts, gradient isolation, smoke
training on tiny hand-built scenarios."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

import bench.models.mtlora as M
from bench.data.scenario import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup
from bench.models.backbones import build_backbone
from bench.models.method import resolve_method
from bench.registry import load_plugins
from bench.run.engine import train

torch.set_num_threads(1)

TINY_SWIN = {"img_size": 16, "patch_size": 2, "window_size": 2, "embed_dim": 8,
             "depths": (1, 2, 1, 1), "num_heads": (1, 2, 2, 4)}
PASCAL = (TaskSpec("semseg", "segmentation", 21, ("miou",)),
          TaskSpec("human_parts", "segmentation", 7, ("miou",)),
          TaskSpec("sal", "segmentation", 1, ("miou",)),
          TaskSpec("normals", "regression", 3, ("abs_err",)))
SINGLE = (TaskSpec("cls", "classification", 4, ("accuracy",)),
          TaskSpec("seg", "segmentation", 3, ("miou",)),
          TaskSpec("depth", "regression", 1, ("abs_err",)))
MULTI = (TaskSpec("a", "classification", 3, ("accuracy",)),
         TaskSpec("b", "classification", 5, ("accuracy",)))


def build(tasks=SINGLE, plus: bool = False, backbone: str = "swin_embedded",
          backbone_kwargs: dict | None = None, input_shape=(1, 12, 12), multi_input=False,
          **kwargs) -> M.MTLoRA:
    kw = dict(TINY_SWIN) if backbone_kwargs is None else backbone_kwargs
    enc = partial(build_backbone, backbone, in_channels=input_shape[0], input_shape=input_shape,
                  **kw)
    cls = M.MTLoRAPlus if plus else M.MTLoRA
    args = {**M.DEFAULTS, "dropout": 0.0, **kwargs}
    return cls([t.name for t in tasks], enc, nn.ModuleDict(), False, multi_input, "cpu",
               tasks=tasks, input_shape=input_shape, **args)


def randomize_lora(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


# ----------------------------------------------------------------------------------- layer


def test_mtlora_linear_formula_and_init() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = M.MTLoRALinear(base, rank=3, tasks=("x", "y"), task_rank=2, scale=4.0,
                           task_scale=2.0)
    x, xt = torch.randn(7, 6), torch.randn(7, 6)
    assert torch.equal(layer(x), base(x))  # B = 0 at init: no change
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_shared_A.abs().sum() > 0
    randomize_lora(layer)
    want = x @ base.weight.T + base.bias + 4.0 * x @ layer.lora_shared_A.T @ layer.lora_shared_B.T
    assert torch.allclose(layer(x), want, atol=1e-5)
    want_t = base(x) + 2.0 * xt @ layer.lora_task_A["y"].T @ layer.lora_task_B["y"].T
    assert torch.allclose(layer.base(x) + layer.task_delta(xt, "y"), want_t, atol=1e-5)
    assert layer.lora_task_A["x"].shape == (2, 6) and layer.lora_shared_B.shape == (5, 3)


# ----------------------------------------------------------------------------------- backbone


def test_last_block_shared_path_equals_timm_block() -> None:
    model = build()
    randomize_lora(model)
    model.eval()
    swin = model.encoder
    x = torch.randn(2, 4, 4, TINY_SWIN["embed_dim"] * 2)
    blk = swin.backbone.model.layers[1].blocks[-1]  # a shifted-window block
    assert any(blk.shift_size)
    with torch.no_grad():
        shared, streams = swin._last_block(blk, x, {"cls": None, "seg": torch.tensor([1])})
        ref = blk(x)
    assert torch.allclose(shared, ref, atol=1e-5)
    assert streams["seg"].shape == (1, 4, 4, 16)
    assert not torch.allclose(streams["cls"], shared, atol=1e-3)  # own TS-LoRA, no TA term


def test_feature_shapes_follow_reference() -> None:
    model = build()
    feats = model.encoder(torch.randn(3, 1, 12, 12), {"cls": None, "seg": torch.tensor([0, 2])})
    assert [tuple(f.shape) for f in feats["cls"]] == [(3, 16, 4, 4), (3, 32, 2, 2),
                                                     (3, 64, 1, 1), (3, 64, 1, 1)]
    assert feats["seg"][0].shape[0] == 2 and set(feats) == {"cls", "seg"}


def test_merge_gives_identical_outputs() -> None:
    for plus in (False, True):
        model = build(plus=plus).double()  # float64: the comparison tests maths, not rounding
        randomize_lora(model, seed=1)
        model.eval()
        x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
        with torch.no_grad():
            before = model(x)
            model.merge_lora()
            merged = [m for m in model.modules() if isinstance(m, M.MTLoRALinear) and m.merged]
            assert len(merged) > 0
            after = model(x)
            model.unmerge_lora()
            again = model(x)
        for t in before:
            assert torch.allclose(before[t], after[t], atol=1e-9), t
            assert torch.allclose(before[t], again[t], atol=1e-9), t
        # not vacuous: the TA-LoRA terms change the output
        with torch.no_grad():
            for m in merged:
                m.lora_shared_B.zero_()
            assert not torch.allclose(model(x)["seg"], before["seg"], atol=1e-3)


def test_frozen_and_trainable_sets() -> None:
    for plus in (False, True):
        model = build(plus=plus)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        for n in frozen:
            assert ".base." in n or (plus and "downsample.reduction.base" in n), n
        assert not any("lora_" in n for n in frozen)
        for must in ("patch_embed.proj.weight", "patch_embed.norm.weight", "norm1.weight",
                     "norm2.bias", "relative_position_bias_table", "downsample.norm.weight"):
            assert any(must in n for n in trainable), must
        red = [n for n in trainable if "downsample.reduction" in n]
        if plus:
            assert red and all("lora_shared" in n for n in red)
        else:
            assert red == [n for n in red if n.endswith("reduction.weight")] and red
        assert all("qkv" not in n for n in trainable if "lora_task" in n)  # QKV stays shared
        layers = model.encoder.backbone.model.layers
        for stage in layers:
            for i, blk in enumerate(stage.blocks):
                has_ts = bool(blk.attn.proj.tasks)
                assert has_ts == (i == len(stage.blocks) - 1)
                assert blk.mlp.fc1.tasks == blk.mlp.fc2.tasks == blk.attn.proj.tasks
        bd = model.param_breakdown()
        assert sum(bd.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_count_formula_small_config() -> None:
    """Hand count for the tiny Swin (C = 8, depths 1-2-1-1, heads 1-2-2-4, window 2, patch 2)."""
    rank, trank, T = 2, 1, 3
    model = build(rank=rank, task_rank=trank, decoder_channels=(2, 2, 2, 2), decoder_expansion=1)
    bd = model.param_breakdown()
    dims, depths, heads = (8, 16, 32, 64), (1, 2, 1, 1), (1, 2, 2, 4)
    ta = sum(rank * ((c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c)) * d
             for c, d in zip(dims, depths))
    ts = sum(T * trank * ((c + c) + (c + 4 * c) + (4 * c + c)) for c in dims)
    assert bd["ta_lora"] == ta == 2 * 16 * (8 * 1 + 16 * 2 + 32 + 64)
    assert bd["ts_lora"] == ts
    assert bd["patch_embed"] == 1 * 8 * 2 * 2 + 8 + 2 * 8
    assert bd["patch_merging"] == sum(4 * c * 2 * c for c in dims[:3])
    assert bd["merging_norm"] == sum(2 * 4 * c for c in dims[:3])
    assert bd["norms"] == sum(4 * c * d for c, d in zip(dims, depths))
    # token grids 8, 4, 2, 1: timm clamps the window to the grid in the last stage (1x1)
    win = (2, 2, 2, 1)
    assert bd["rel_pos_bias"] == sum((2 * w - 1) ** 2 * h * d
                                     for w, h, d in zip(win, heads, depths))
    feat = (16, 32, 64, 64)
    per_task = sum(f * 2 for f in feat) + (8 * 8 + 8) + 2 * 8
    assert bd["decoders"] == sum(per_task + 8 * t.num_outputs + t.num_outputs for t in SINGLE)
    plus = build(plus=True, rank=rank, task_rank=trank, decoder_channels=(2, 2, 2, 2))
    pb = plus.param_breakdown()
    assert pb["patch_merging"] == 0
    assert pb["merging_lora"] == sum(rank * (4 * c + 2 * c) for c in dims[:3])


# ----------------------------------------------------------------------------------- Table 1


@pytest.mark.parametrize("plus,rank,task_rank,expected", [
    (False, 16, 4, 4.95), (False, 32, 4, 6.08), (False, 64, 4, 8.34),
    (True, 4, 4, 2.57), (True, 8, 8, 3.15), (True, 16, 16, 4.29),
])
def test_table1_trainable_counts(plus: bool, rank: int, task_rank: int, expected: float) -> None:
    """Swin-T (448px), 4 PASCAL-Context tasks, HRNet-W18 decoders: Table 1 within 0.01M."""
    model = build(PASCAL, plus=plus, backbone="swin_t", backbone_kwargs={},
                  input_shape=(3, 448, 448), rank=rank, task_rank=task_rank,
                  decoder_channels=(18, 36, 72, 144))
    bd = model.param_breakdown()
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(bd.values()) == total
    assert abs(total / 1e6 - expected) <= 0.01, total
    # decoders alone: the "MTL - Tuning Decoders Only" row (1.94M)
    assert bd["decoders"] == 1_946_624 and abs(bd["decoders"] / 1e6 - 1.94) <= 0.01
    if not plus and rank == 64:  # Table 3: freezing patch merging / norms / position bias
        assert round((total - bd["patch_merging"]) / 1e6, 2) == 6.80
        assert round((total - bd["rel_pos_bias"]) / 1e6, 2) == 8.32
        norms = bd["norms"] + bd["merging_norm"] + 2 * 96
        assert round((total - norms) / 1e6, 2) == 8.32


@pytest.mark.parametrize("removed,expected", [
    ("fc1", 6.81), ("fc2", 6.81), ("proj", 7.73), ("qkv", 7.21)])
def test_table2_counts_without_one_location(removed: str, expected: float) -> None:
    """MTLoRA Table 2 (Swin-T, the 8.34M configuration): trainable parameters when the low-rank
    modules of one location are removed."""
    locations = tuple(loc for loc in ("qkv", "proj", "fc1", "fc2") if loc != removed)
    model = build(PASCAL, backbone="swin_t", backbone_kwargs={}, input_shape=(3, 448, 448),
                  rank=64, task_rank=4, decoder_channels=(18, 36, 72, 144), locations=locations)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(total / 1e6 - expected) <= 0.01, total


def test_unknown_location_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MTLoRA locations"):
        build(locations=("qkv", "mlp"))


# ----------------------------------------------------------------------------------- gradients


def test_ts_lora_gradient_reaches_only_its_task() -> None:
    model = build()
    randomize_lora(model)  # B != 0, so every TS-LoRA factor is on a live path
    model.train()
    out = model(torch.randn(4, 1, 12, 12))
    out["seg"].square().mean().backward()
    for name, p in model.named_parameters():
        if "lora_task" in name:
            grad = p.grad
            nonzero = grad is not None and grad.abs().sum() > 0
            assert nonzero == name.endswith(".seg"), name
    shared = [p for n, p in model.named_parameters() if "lora_shared_B" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)


def test_multi_input_rows_and_isolation() -> None:
    model = build(MULTI, multi_input=True)
    model.eval()
    x = torch.randn(5, 1, 12, 12)
    ids = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        fused = model(x, task_ids=ids)
        per_a = model(x[ids == 0], task_name="a")
        per_b = model(x[ids == 1], task_name="b")
    assert fused["a"].shape == (2, 3) and fused["b"].shape == (3, 5)
    assert torch.allclose(fused["a"], per_a["a"], atol=1e-5)
    assert torch.allclose(fused["b"], per_b["b"], atol=1e-5)
    assert set(per_a) == {"a"}


# ----------------------------------------------------------------------------------- training


class _Tiny(Scenario):
    profiles = ("smoke",)

    def __init__(self, kind: str) -> None:
        self.name, self.heterogeneity = f"tiny_mtlora_{kind}", kind  # type: ignore[assignment]

    def setup(self, profile: str) -> TrainingSetup:
        return SETUP


SETUP = TrainingSetup(epochs=2, batch_size=4, optimizer="adam", lr=1e-2, eval_batch_size=16)


def _target(task: TaskSpec, n: int, gen: torch.Generator, hw=(12, 12)) -> torch.Tensor:
    if task.kind == "classification":
        return torch.randint(0, task.num_outputs, (n,), generator=gen)
    if task.kind == "segmentation":
        return torch.randint(0, task.num_outputs, (n, *hw), generator=gen)
    return torch.rand((n, task.num_outputs, *hw), generator=gen)


def _tiny_data(kind: str) -> ScenarioData:
    gen = torch.Generator().manual_seed(0)
    tasks = SINGLE if kind == "single_input" else MULTI

    def split(n: int) -> Split:
        if kind == "single_input":
            return Split(torch.randn((n, 1, 12, 12), generator=gen),
                         {t.name: _target(t, n, gen) for t in tasks})
        return Split({t.name: torch.randn((n, 1, 12, 12), generator=gen) for t in tasks},
                     {t.name: _target(t, n, gen) for t in tasks})

    return ScenarioData(name=f"tiny_mtlora_{kind}", heterogeneity=kind,  # type: ignore[arg-type]
                        tasks=tasks, input_shape=(1, 12, 12), train=split(8), val=split(4),
                        test=split(4), training=SETUP)


@pytest.mark.parametrize("method", ["mtlora", "mtlora_plus"])
@pytest.mark.parametrize("kind", ["single_input", "multi_input"])
def test_smoke_training(method: str, kind: str) -> None:
    load_plugins()
    spec = resolve_method(method).with_overrides({f"arch.{k}": v for k, v in {
        "rank": 2, "task_rank": 2, "decoder_channels": (2, 2, 2, 2)}.items()})
    assert spec.arch_spec.backbone == "swin_embedded" and spec.weighting == "ew"
    data = _tiny_data(kind)
    result = train(spec, _Tiny(kind), data, SETUP, seed=0)
    assert result.forward_mode == ("fused" if kind == "multi_input" else "single_input")
    assert result.param_breakdown is not None
    assert sum(result.param_breakdown.values()) == result.trainable_params
    assert result.trainable_params < result.total_params
    assert set(result.test_metrics) == {t.name for t in data.tasks}


def test_backbone_loads_local_checkpoint(tmp_path) -> None:
    from timm.models.swin_transformer import SwinTransformer

    src = SwinTransformer(img_size=16, patch_size=2, in_chans=1, num_classes=5, embed_dim=8,
                          depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)
    path = tmp_path / "swin.pth"
    torch.save({"model": src.state_dict()}, path)
    net = build_backbone("swin_embedded", in_channels=1, checkpoint=str(path), **TINY_SWIN)
    fresh = build_backbone("swin_embedded", in_channels=1, **TINY_SWIN)
    w = "layers.2.blocks.0.attn.qkv.weight"
    assert torch.equal(net.model.state_dict()[w], src.state_dict()[w])
    assert not torch.equal(fresh.model.state_dict()[w], src.state_dict()[w])
    # the wrapped model keeps the loaded weights as its frozen base weights
    model = build()
    assert model.encoder.backbone.model.layers[2].blocks[0].attn.qkv.base.weight.shape == (96, 32)
    bad = tmp_path / "bad.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 1, 2, 2)}, bad)
    with pytest.raises(ValueError, match="lacks backbone weights"):
        build_backbone("swin_embedded", in_channels=1, checkpoint=str(bad), **TINY_SWIN)


def test_methods_registered() -> None:
    from bench.registry import methods

    assert {"mtlora", "mtlora_plus"} <= set(methods.list())
    assert resolve_method("mtlora_plus").resolved_arch_kwargs()["rank"] == 4


def test_eval_recalibrates_batchnorm_on_recent_training_batches() -> None:
    """Precise BN: on switching to eval the decoders' running statistics become the exact mean
    of the batch statistics of the cached training batches under the current weights."""
    torch.manual_seed(0)
    model = build(precise_bn_samples=8)
    batches = [torch.randn(4, 1, 12, 12) for _ in range(3)]
    model.train()
    for x in batches:
        model(x)["seg"].sum().backward()  # cached with gradients enabled
    with torch.no_grad():
        model(torch.randn(4, 1, 12, 12))  # not cached: no gradients (evaluation-style call)
    assert len(model._bn_batches) == 2  # capped at 8 samples: the last two batches
    bn = model.decoders["seg"].fuse[1]
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(i[0].mean(dim=(0, 2, 3))))
    with torch.no_grad():
        for x in batches[1:]:
            model._forward(x)
    hook.remove()
    model.eval()
    assert not model._bn_batches
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert bn.momentum == 0.1
    model.eval()  # eval -> eval: nothing to recalibrate, statistics kept
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
