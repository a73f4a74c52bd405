"""The parameter-efficient baselines of MTLoRA Table 1 on MTLoRA's model: exactly which
parameters each one trains, that each differs from MTLoRA's model only by its adaptation (same
features, same decoders, the run's backbone weights), each mechanism on a small Swin, and the
trainable-parameter counts on Swin-T with 4 PASCAL-Context tasks (Table 1)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

import bench.models.mtlora as M
import bench.models.peft as P
from bench.data.scenario import TaskSpec
from bench.models.backbones import build_backbone
from bench.models.method import resolve_method, resolve_run_method
from bench.registry import load_plugins

torch.set_num_threads(1)
load_plugins()

PEFT = ("decoders_only", "full_finetune", "lora_shared", "lora_single_task", "adapter",
        "bitfit", "vpt_deep")
TINY_SWIN = {"img_size": 16, "patch_size": 2, "window_size": 2, "embed_dim": 8,
             "depths": (1, 2, 1, 1), "num_heads": (1, 2, 2, 4)}
SINGLE = TaskSpec("cls", "classification", 4, ("accuracy",)), \
    TaskSpec("seg", "segmentation", 3, ("miou",))
PASCAL = (TaskSpec("semseg", "segmentation", 21, ("miou",)),
          TaskSpec("human_parts", "segmentation", 7, ("miou",)),
          TaskSpec("sal", "segmentation", 1, ("miou",)),
          TaskSpec("normals", "regression", 3, ("abs_err",)))


def build(method: str, tasks=SINGLE, profile: str | None = None, backbone: str = "swin_embedded",
          backbone_kwargs: dict | None = None, input_shape=(1, 12, 12), multi_input=False,
          **arch) -> nn.Module:
    """The method's architecture as build_model makes it (resolved defaults, the profile's
    scale, ``arch`` overrides), on an explicit backbone."""
    spec = resolve_run_method(method, {f"arch.{k}": v for k, v in arch.items()}, profile)
    kwargs = dict(TINY_SWIN) if backbone_kwargs is None else backbone_kwargs
    enc = partial(build_backbone, backbone, in_channels=input_shape[0], input_shape=input_shape,
                  **kwargs)
    return spec.arch_spec.cls([t.name for t in tasks], enc, nn.ModuleDict(), False, multi_input,
                              "cpu", tasks=tasks, input_shape=input_shape,
                              **spec.resolved_arch_kwargs())


def trainable_backbone(model: nn.Module) -> set[str]:
    return {n for n, p in model.backbone_parameters() if p.requires_grad}


def all_backbone(model: nn.Module) -> set[str]:
    return {n for n, _ in model.backbone_parameters()}


# --------------------------------------------------------------------------- trainable sets


def test_exactly_which_parameters_each_method_trains() -> None:
    extras = set(P.EXTRAS)
    for method in PEFT:
        model = build(method)
        names = trainable_backbone(model)
        comps = {n: P.component(n) for n in all_backbone(model)}
        assert all(p.requires_grad for p in model.decoders.parameters()), method
        if method == "decoders_only":
            assert names == set()
        elif method == "full_finetune":
            assert names == all_backbone(model)
        elif method == "bitfit":
            assert names == {n for n in comps if n.endswith(".bias")}
            assert not any("relative_position_bias_table" in n for n in names)
        else:  # the inserted modules + MTLoRA's §3.4 modules, nothing else
            assert names == {n for n, c in comps.items() if c == "adaptation" or c in extras}
            assert {comps[n] for n in names} == {"adaptation", *extras}, method
        bd = model.param_breakdown()
        assert sum(bd.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_unfreeze_chooses_the_extras() -> None:
    for method in ("lora_shared", "adapter", "vpt_deep", "lora_single_task"):
        names = trainable_backbone(build(method, unfreeze=[]))
        assert names and all(P.component(n) == "adaptation" for n in names), method
    names = trainable_backbone(build("bitfit", unfreeze=["patch_embed", "patch_merging"]))
    assert any("downsample.reduction.weight" in n for n in names)
    assert any(n.startswith("patch_embed.proj.weight") for n in names)
    with pytest.raises(ValueError, match="unknown arch.unfreeze"):
        build("adapter", unfreeze=["everything"])


def test_inserted_modules_where_each_method_says() -> None:
    lora = build("lora_shared", rank=2)
    for stage in lora.encoder.model.layers:
        for blk in stage.blocks:  # every block, the last of a stage included
            for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                assert isinstance(layer, M.MTLoRALinear) and layer.rank == 2
                assert not layer.tasks  # no task-specific module
    adapter = build("adapter")
    blk = adapter.encoder.model.layers[2].blocks[0]  # width 32 -> bottleneck 8
    assert isinstance(blk.attn.proj, P.AdaptedLinear) and isinstance(blk.mlp.fc2, P.AdaptedLinear)
    assert blk.attn.proj.adapter.down.out_features == 8
    vpt = build("vpt_deep", num_prompts=3)
    for stage in vpt.encoder.model.layers:
        for blk in stage.blocks:
            assert isinstance(blk.attn, P.PromptedWindowAttention)
            assert blk.attn.prompts.shape == (3, blk.norm1.normalized_shape[0])
    single = build("lora_single_task")
    assert len(single.encoder) == 2 and single.encoder[0] is not single.encoder[1]


# --------------------------------------------------------------------------- same model


def test_at_initialisation_every_method_computes_mtloras_features() -> None:
    """Same backbone weights, same multi-scale features: LoRA (B = 0) and the frozen / fully
    trained backbones give MTLoRA's features at initialisation (its TS-LoRA starts at 0 too)."""
    torch.manual_seed(0)
    mtlora = build("mtlora", rank=2, task_rank=2)
    weights = {k.replace(".base.", "."): v  # MTLoRA's frozen weights by their timm names
               for k, v in mtlora.encoder.backbone.model.state_dict().items() if "lora_" not in k}
    x = torch.randn(3, 1, 12, 12)
    mtlora.eval()
    with torch.no_grad():
        ref = mtlora.encoder(x, {"cls": None})["cls"]
    for method in ("decoders_only", "full_finetune", "lora_shared", "lora_single_task"):
        model = build(method)
        for enc in (model.encoder if method == "lora_single_task" else [model.encoder]):
            own = enc.model.state_dict()
            own.update({k: weights[k.replace(".base.", ".")] for k in own if "lora_" not in k})
            enc.model.load_state_dict(own)
        model.eval()
        with torch.no_grad():
            enc = model.encoder[0] if method == "lora_single_task" else model.encoder
            feats = P.multiscale_features(enc, x)
        assert len(feats) == len(ref) == 4
        for f, r in zip(feats, ref):
            assert torch.allclose(f, r, atol=1e-5), method
        assert [h.reduce[i].in_channels for h in [model.decoders["seg"]] for i in range(4)] == \
            [h.reduce[i].in_channels for h in [mtlora.decoders["seg"]] for i in range(4)]


def test_adapter_is_the_identity_with_a_zero_up_projection() -> None:
    torch.manual_seed(1)
    model = build("adapter")
    frozen = build("decoders_only")
    frozen.encoder.model.load_state_dict(
        {k.replace(".base.", "."): v for k, v in model.encoder.model.state_dict().items()
         if "adapter" not in k})
    x = torch.randn(2, 1, 12, 12)
    model.eval()
    frozen.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, P.Adapter):
                m.up.weight.zero_()
                m.up.bias.zero_()
        same = P.multiscale_features(model.encoder, x)
        ref = P.multiscale_features(frozen.encoder, x)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(same, ref))
        adapter = P.Adapter(4, 2)
        h = torch.randn(5, 4)
        adapter.up.weight.fill_(1.0)
        want = h + torch.nn.functional.gelu(h @ adapter.down.weight.T + adapter.down.bias) \
            @ adapter.up.weight.T + adapter.up.bias
        assert torch.allclose(adapter(h), want, atol=1e-6)


def test_vpt_without_prompts_is_the_timm_block_and_prompts_are_keys_and_values() -> None:
    """With 0 prompts the prompted window attention is timm's (shifted windows and their mask
    included); with prompts, every window of every image attends to the same extra tokens."""
    torch.manual_seed(2)
    swin = build_backbone("swin_embedded", in_channels=1, **TINY_SWIN)
    blk = swin.model.layers[1].blocks[1]
    assert any(blk.shift_size)
    x = torch.randn(2, 4, 4, 16)
    with torch.no_grad():
        ref = blk(x)
        inner = blk.attn
        blk.attn = P.PromptedWindowAttention(inner, blk.norm1, 0, 2)
        assert torch.allclose(blk(x), ref, atol=1e-5)
        prompted = P.PromptedWindowAttention(inner, blk.norm1, 3, 2)
        blk.attn = prompted
        out = blk(x)
        assert not torch.allclose(out, ref, atol=1e-3)
        # by hand for one window of an unshifted block: softmax over [prompts; window]
        blk0 = swin.model.layers[1].blocks[0]
        prompted0 = P.PromptedWindowAttention(blk0.attn, blk0.norm1, 3, 2)
        win = blk0.norm1(torch.randn(1, 4, 16))
        a = blk0.attn
        qkv = a.qkv(win)[0].view(4, 3, a.num_heads, -1)
        pkv = a.qkv(blk0.norm1(prompted0.prompts)).view(3, 3, a.num_heads, -1)
        k = torch.cat([pkv[:, 1], qkv[:, 1]])
        v = torch.cat([pkv[:, 2], qkv[:, 2]])
        bias = a._get_rel_pos_bias()[0]  # heads, 4, 4
        heads = []
        for hd in range(a.num_heads):
            s = qkv[:, 0, hd] @ k[:, hd].T * a.scale
            s[:, 3:] += bias[hd]
            heads.append(s.softmax(-1) @ v[:, hd])
        want = a.proj(torch.cat(heads, dim=-1))
        assert torch.allclose(prompted0(win), want[None], atol=1e-5)
    blk.attn.prompts.grad = None
    blk(x).sum().backward()
    assert blk.attn.prompts.grad.abs().sum() > 0


def test_single_task_lora_gradients_stay_in_their_task_copy() -> None:
    model = build("lora_single_task", tasks=(TaskSpec("a", "classification", 3, ("accuracy",)),
                                             TaskSpec("b", "classification", 5, ("accuracy",))),
                  multi_input=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_shared_B" in n:
                p.normal_()
    out = model(torch.randn(4, 1, 12, 12), task_ids=torch.tensor([0, 1, 0, 1]))
    assert out["a"].shape == (2, 3) and out["b"].shape == (2, 5)
    out["a"].sum().backward()
    for t, enc in enumerate(model.encoder):
        grads = [p.grad for n, p in enc.model.named_parameters() if "lora_" in n]
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached == (t == 0)


def test_the_runs_backbone_weights_are_used(tmp_path) -> None:
    """A ``checkpoint`` (or pretrained) backbone keyword reaches every method's frozen Swin —
    every task copy of single-task LoRA included — as it reaches MTLoRA's."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(3)
    src = SwinTransformer(img_size=16, patch_size=2, in_chans=1, num_classes=0, embed_dim=8,
                          depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)
    path = tmp_path / "swin.pth"
    torch.save(src.state_dict(), path)
    want = src.state_dict()["layers.2.blocks.0.attn.qkv.weight"]
    for method in PEFT:
        model = build(method, backbone_kwargs={**TINY_SWIN, "checkpoint": str(path)})
        encoders = model.encoder if method == "lora_single_task" else [model.encoder]
        for enc in encoders:
            got = [p for n, p in enc.model.named_parameters()
                   if n.replace(".base.", ".").replace(".inner.", ".")
                   == "layers.2.blocks.0.attn.qkv.weight"]
            assert len(got) == 1 and torch.equal(got[0], want), method
    spec = resolve_method("adapter").with_overrides({"backbone.checkpoint": "x.pth"})
    assert spec.resolve_backbone("resnet", {})[1] == {"checkpoint": "x.pth"}


def test_paper_profile_is_mtloras_setup() -> None:
    for method in PEFT:
        ident = resolve_run_method(method, None, "paper").identity()
        assert ident["backbone"] == "swin_t" and ident["backbone_kwargs"] == {"pretrained": True}
        assert list(ident["arch_kwargs"]["decoder_channels"]) == [18, 36, 72, 144]
    assert resolve_run_method("lora_shared", None, "paper").resolved_arch_kwargs()["rank"] == 16
    assert resolve_run_method("lora_single_task", None, "paper") \
        .resolved_arch_kwargs()["rank"] == 4
    assert resolve_run_method("vpt_deep", None, "paper").resolved_arch_kwargs()[
        "num_prompts"] == 50
    assert resolve_method("lora_shared").resolved_arch_kwargs()["rank"] == 8
    assert resolve_method("decoders_only").arch_spec.backbone == "swin_embedded"


# --------------------------------------------------------------------------- Table 1 counts

#: Swin-T (C = 96, depths 2-2-6-2, heads 3-6-12-24, window 7) at 448², by hand
DIMS, DEPTHS, HEADS = (96, 192, 384, 768), (2, 2, 6, 2), (3, 6, 12, 24)
SUM_C = sum(c * d for c, d in zip(DIMS, DEPTHS))  # 4416: Σ over blocks of the block width
DECODERS = 1_946_624  # HRNet-W18 heads, 4 tasks (test_mtlora.py: Table 1's 1.94M row)
EXTRAS = {"patch_embed": 3 * 96 * 16 + 96 + 2 * 96,
          "patch_merging": sum(4 * c * 2 * c for c in DIMS[:3]),
          "norms": 4 * SUM_C + sum(2 * 4 * c for c in DIMS[:3]),
          "rel_pos_bias": (2 * 7 - 1) ** 2 * sum(h * d for h, d in zip(HEADS, DEPTHS))}
BACKBONE = 28_288_354 - (768 * 1000 + 1000) - 2 * 768  # timm swin_tiny - classifier - final norm


def _lora(rank: int, locations=("qkv", "proj", "fc1", "fc2")) -> int:
    per_c = {"qkv": 1 + 3, "proj": 1 + 1, "fc1": 1 + 4, "fc2": 4 + 1}
    return rank * sum(per_c[loc] for loc in locations) * SUM_C


def _adapter(reduction: int = 4) -> int:
    return sum(2 * d * (2 * c * (c // reduction) + c // reduction + c)
               for c, d in zip(DIMS, DEPTHS))


#: method, arch overrides, trainable parameters by hand, MTLoRA Table 1's row (M)
TABLE1 = [
    ("decoders_only", {}, DECODERS, 1.94),
    ("full_finetune", {}, DECODERS + BACKBONE, 30.06),
    ("lora_shared", {}, DECODERS + _lora(16) + sum(EXTRAS.values()), None),
    ("lora_single_task", {"unfreeze": [], "locations": ["qkv", "proj"]},
     DECODERS + 4 * _lora(4, ("qkv", "proj")), 2.87),
    ("lora_single_task", {}, DECODERS + 4 * (_lora(4) + sum(EXTRAS.values())), 2.87),
    ("adapter", {}, DECODERS + _adapter() + sum(EXTRAS.values()), 11.24),
    ("bitfit", {}, DECODERS + 9 * SUM_C + 2 * SUM_C + sum(4 * c for c in DIMS[:3]) + 2 * 96,
     2.85),
    ("vpt_deep", {}, DECODERS + 50 * SUM_C + sum(EXTRAS.values()), 3.43),
]


@pytest.mark.parametrize("method,arch,expected,paper", TABLE1)
def test_table1_trainable_counts(method: str, arch: dict, expected: int, paper: float | None
                                 ) -> None:
    """Trainable parameters under ``--profile paper`` (Swin-T at 448², HRNet-W18 decoders, 4
    PASCAL-Context tasks), counted by hand. Table 1: decoders only 1.94M (ours 1.95M), full
    fine-tuning 30.06M (ours 29.46M: our backbone is timm's Swin-T without classifier and final
    norm, 27.52M). Table 1's other PEFT rows come from Polyhistor's task-wise setup (one module
    set per task, no MTLoRA §3.4 modules): LoRA 2.87M (ours, attention-only rank 4 per task and
    nothing else: 2.37M; our default, four locations and MTLoRA's §3.4 modules per copy:
    9.48M), Adapter 11.24M (our shared adapters: 5.71M; four task-wise sets would be 10.62M),
    BitFit 2.85M (biases only: 2.00M), VPT-deep 3.43M (3.77M); MTLoRA without TS-LoRA (our
    shared LoRA, rank 16) 4.68M against MTLoRA's 4.95M."""
    model = build(method, PASCAL, "paper", backbone="swin_t", backbone_kwargs={},
                  input_shape=(3, 448, 448), **arch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected
    assert model.param_breakdown()["decoders"] == DECODERS
    if method in ("decoders_only", "full_finetune"):
        assert abs(trainable / 1e6 - paper) <= 0.61  # 1.95 vs 1.94; 29.46 vs 30.06
