"""Encoders ("backbones") shared by all methods, with the *staged-encoder* protocol.

A staged encoder has ``stem`` (a module), ``stages`` (an ``nn.ModuleList``), ``stage_channels``
(output channels of each stage) and ``out_channels``; ``forward(x)`` is
``stages[-1](...stages[0](stem(x)))`` and returns a feature map ``(N, C, h, w)``. Cross-Stitch,
MoLA's placement ("Block4" = ``stages[3]``) and the parameter-count plots rely on it.

* ``resnet`` — a ResNet with one or more :class:`BasicBlock` per stage; ``widths=(64,128,256,512),
  blocks=(2,2,2,2)`` is ResNet-18 (He et al. 2016) as MoLA uses it (Appendix B); the embedded
  scenarios use a narrow version so that a run takes seconds on a CPU.
* ``timm_resnet18`` — timm's ResNet-18 re-exposed with the staged protocol (paper profile).

Weights: a backbone built with ``checkpoint=FILE`` loads a local file; ``pretrained=True`` loads
the timm weights named in :data:`PRETRAINED` (from the Hugging Face cache, downloaded once).
:func:`weights_problem` tells, before any training, why those cannot be had.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import torch
from pydantic import Field, model_validator
from torch import nn

from bench.data.settings import Settings, settings_from_defaults
from bench.models.registries import backbones  # the registry, declared without torch

#: keywords every builder takes from the scenario, not from ``--set backbone.*``
SCENARIO_KWARGS = ("in_channels", "input_shape")


def declares(settings: type[Settings]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the ``backbone.*`` settings a backbone builder accepts (types and ranges)."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        builder.settings = settings  # type: ignore[attr-defined]
        return builder

    return deco


@cache
def backbone_settings(name: str) -> type[Settings]:
    """The declared ``backbone.*`` settings of backbone ``name``; for a builder that declares
    none, its keyword parameters typed as their defaults."""
    builder = backbones.get(name)
    declared = getattr(builder, "settings", None)
    if declared is not None:
        return declared
    params = inspect.signature(builder).parameters.values()
    defaults = {p.name: p.default for p in params if p.name not in SCENARIO_KWARGS
                and p.default is not inspect.Parameter.empty}
    return settings_from_defaults(f"{name}_backbone", defaults)


Width = Annotated[int, Field(ge=1, le=4096)]
Stages = Annotated[tuple[Width, ...], Field(min_length=1, max_length=8)]


class ResNetShape(Settings):
    """``backbone.*`` that shape a ResNet (one entry per stage)."""

    widths: Stages = (16, 32, 64, 128)
    blocks: Annotated[tuple[Annotated[int, Field(ge=1, le=64)], ...],
                      Field(min_length=1, max_length=8)] = (1, 1, 1, 1)
    strides: Annotated[tuple[Annotated[int, Field(ge=1, le=4)], ...],
                       Field(min_length=1, max_length=8)] = (1, 2, 2, 2)
    stem_stride: Annotated[int, Field(ge=1, le=4)] = 1
    stem_pool: bool = False

    @model_validator(mode="after")
    def _one_entry_per_stage(self) -> ResNetShape:
        if not len(self.widths) == len(self.blocks) == len(self.strides):
            raise ValueError("backbone.widths, backbone.blocks and backbone.strides need one "
                             "entry per stage each")
        return self


Init = Literal["scratch", "pretrained"]


class ResNetSettings(ResNetShape):
    """``backbone.*`` of the narrow ResNet: its shape, and its start (``init``)."""

    init: Init = Field("scratch", description=(
        "pretrained: the committed fractal-pretrained checkpoint (python -m bench pretrain); "
        "the embedded scenarios' default"))


class PretrainedResNetSettings(ResNetShape):
    """``backbone.*`` of ResNet-18: the ResNet's, and where its weights come from."""

    widths: Stages = (64, 128, 256, 512)
    blocks: Annotated[tuple[Annotated[int, Field(ge=1, le=64)], ...],
                      Field(min_length=1, max_length=8)] = (2, 2, 2, 2)
    stem_stride: Annotated[int, Field(ge=1, le=4)] = 2
    stem_pool: bool = True
    pretrained: bool | str = Field(False, description="true: timm's resnet18.tv_in1k")
    checkpoint: str | None = Field(None, description="a local torchvision/timm state dict")


class TimmResNetSettings(Settings):
    """``backbone.*`` of timm's resnet18."""

    checkpoint: str | None = Field(None, description="a local timm resnet18 state dict")
    drop_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

#: backbone keywords that choose weights, not the architecture
WEIGHT_KWARGS = ("pretrained", "checkpoint", "init")
#: backbone -> timm name of the weights ``pretrained=True`` loads
PRETRAINED: dict[str, str] = {"swin_t": "swin_tiny_patch4_window7_224.ms_in1k",
                              "resnet18": "resnet18.tv_in1k"}
HOW_TO_PROVIDE = ("connect once so timm caches them (or set HF_ENDPOINT to a mirror), or pass a "
                  "local file with --set backbone.checkpoint=FILE")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be obtained (no network, no cache): one line saying how
    to provide them."""


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity or 1x1-projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class StagedEncoder(nn.Module):
    """Base class of the staged-encoder protocol."""

    stem: nn.Module
    stages: nn.ModuleList
    stage_channels: tuple[int, ...]

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class ResNet(StagedEncoder):
    """A ResNet of basic blocks; ResNet-18 with the defaults of :func:`resnet18`."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        strides: Sequence[int] = (1, 2, 2, 2),
        stem_stride: int = 1,
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        if not (len(widths) == len(blocks) == len(strides)):
            raise ValueError("widths, blocks and strides must have the same length")
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3 if stem_stride == 1 else 7, stem_stride,
                      1 if stem_stride == 1 else 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages = []
        in_ch = widths[0]
        for width, n_blocks, stride in zip(widths, blocks, strides):
            layers = [BasicBlock(in_ch, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(widths)


@backbones.register("resnet", description="ResNet of basic blocks (narrow by default)")
@declares(ResNetSettings)
def resnet(in_channels: int = 3, input_shape: Any = None, init: str | None = "scratch",
           **kwargs: Any) -> ResNet:
    """``init="pretrained"`` loads the committed checkpoint (:mod:`bench.models.pretrained`)."""
    model = ResNet(in_channels=in_channels, **kwargs)
    if init == "pretrained":
        from bench.models.pretrained import load_pretrained

        load_pretrained(model, "resnet")
    return model


@backbones.register("resnet18", description="ResNet-18 (MoLA Appendix B), 11.2M parameters")
@declares(PretrainedResNetSettings)
def resnet18(in_channels: int = 3, input_shape: Any = None, pretrained: bool | str = False,
             checkpoint: str | None = None, **kwargs: Any) -> ResNet:
    """ResNet-18, torchvision's layout. ``pretrained=True`` starts from the ImageNet weights
    MoLA's reference loads (torchvision's, timm's ``resnet18.tv_in1k``); ``checkpoint=FILE``
    from a local torchvision- or timm-format file."""
    kwargs = {"widths": (64, 128, 256, 512), "blocks": (2, 2, 2, 2), "strides": (1, 2, 2, 2),
              "stem_stride": 2, "stem_pool": True, **kwargs}
    model = ResNet(in_channels=in_channels, **kwargs)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        load_torchvision_resnet(model, state.get("state_dict", state), str(checkpoint))
    elif pretrained:
        name = PRETRAINED["resnet18"] if pretrained is True else str(pretrained)
        load_torchvision_resnet(model, timm_pretrained_state(name), name)
    return model


def load_torchvision_resnet(model: ResNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision/timm ResNet state dict (``conv1``, ``bn1``, ``layerK.B.*``,
    ``downsample``) into :class:`ResNet`'s layout (``stem``, ``stages``, ``shortcut``); the
    classifier is ignored. Every tensor of the model must be found (``source`` names the file
    or weights in the error)."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("fc", "classifier", "head"):
            continue
        if parts[0] == "conv1":
            parts[0] = "stem.0"
        elif parts[0] == "bn1":
            parts[0] = "stem.1"
        elif parts[0].startswith("layer"):
            parts[0] = f"stages.{int(parts[0][5:]) - 1}"
            parts = ["shortcut" if p == "downsample" else p for p in parts]
        renamed[".".join(parts)] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source} is not a ResNet-18 state dict of torchvision's layout: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")


def timm_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The state dict of timm's pretrained weights ``name`` (Hugging Face cache, downloaded
    once); one actionable line when they cannot be obtained."""
    import timm

    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:  # network, hub or cache errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedWeightsError(
            f"cannot obtain the pretrained weights {name!r} from the Hugging Face hub "
            f"({type(err).__name__}: {reason[:160]}); {HOW_TO_PROVIDE}") from None


class TimmStaged(StagedEncoder):
    """A timm ResNet exposed with the staged-encoder protocol (no classifier head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        self.stages = nn.ModuleList([model.layer1, model.layer2, model.layer3, model.layer4])
        self.stage_channels = tuple(
            stage[-1].conv2.out_channels for stage in self.stages  # type: ignore[index]
        )


@backbones.register("timm_resnet18", description="timm's resnet18 (loads a local checkpoint)")
@declares(TimmResNetSettings)
def timm_resnet18(in_channels: int = 3, input_shape: Any = None, checkpoint: str | None = None,
                  **kwargs: Any) -> TimmStaged:
    import timm

    model = timm.create_model("resnet18", pretrained=False, in_chans=in_channels, num_classes=0,
                              **kwargs)
    if checkpoint:
        load_timm_resnet(model, torch.load(checkpoint, map_location="cpu", weights_only=True),
                         str(checkpoint))
    return TimmStaged(model)


def load_timm_resnet(model: nn.Module, state: Any, source: str) -> None:
    """Load a timm ResNet state dict (optionally under ``state_dict`` / ``model``; the
    classifier ``fc.*`` is ignored) into ``model``: every tensor of the model must be found and
    none may be left over, else one line naming ``source`` (as the Swin and torchvision
    loaders)."""
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not state:
        raise ValueError(f"checkpoint {source} holds no state dict (an empty or unrelated file)")
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a known key with another shape
        raise ValueError(f"checkpoint {source} does not fit timm's resnet18: "
                         f"{str(err).splitlines()[-1].strip()[:200]}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {source} is not a timm resnet18 state dict: missing "
                         f"{len(missing)} tensors {missing[:3]}, unexpected {len(unexpected)} "
                         f"{unexpected[:3]}")


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; every builder takes ``in_channels`` and ``input_shape``."""
    return backbones.get(name)(**kwargs)


def weights_problem(name: str, kwargs: dict[str, Any]) -> str | None:
    """Why backbone ``name`` built with ``kwargs`` cannot obtain its weights, or None: a
    ``checkpoint`` file that does not exist; ``pretrained`` weights neither in the Hugging Face
    cache nor reachable (checked without downloading anything); ``init="pretrained"`` without a
    committed checkpoint that fits (:func:`bench.models.pretrained.pretrained_problem`)."""
    if kwargs.get("init") == "pretrained":
        from bench.models.pretrained import pretrained_problem

        return pretrained_problem(name, kwargs, backbone_settings(name))
    checkpoint = kwargs.get("checkpoint")
    if checkpoint:
        path = Path(str(checkpoint)).expanduser()
        return None if path.is_file() else f"backbone checkpoint {path} does not exist"
    pretrained = kwargs.get("pretrained")
    if not pretrained:
        return None
    weights = PRETRAINED.get(name) if pretrained is True else str(pretrained)
    if weights is None:
        return (f"backbone {name!r} has no pretrained weights (known: "
                f"{', '.join(PRETRAINED)}); pass --set backbone.checkpoint=FILE instead")
    return _hub_problem(weights)


@cache
def _hub_problem(weights: str) -> str | None:
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(weights)
    if cfg is None:
        return f"timm knows no pretrained weights named {weights!r}"
    repo = cfg.hf_hub_id or f"timm/{weights}"
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors",
                                                               "pytorch_model.bin"]
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
        return None
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes"):
        return (f"pretrained weights {weights!r} are not in the Hugging Face cache and "
                f"HF_HUB_OFFLINE is set; {HOW_TO_PROVIDE}")
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        return (f"pretrained weights {weights!r} are not in the Hugging Face cache and {host} "
                f"is unreachable ({err}); {HOW_TO_PROVIDE}")
    return None
