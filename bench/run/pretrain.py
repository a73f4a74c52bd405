"""Pretraining the embedded backbones on fractals (``python -m bench pretrain``).

Objective: supervised classification of the fractal *category* (FractalDB, Kataoka et al.,
ACCV 2020, §4: formula-supervised pretraining; the category is the IFS that drew the image).
A linear head on the globally pooled last-stage features is trained with label-smoothed cross
entropy and AdamW (linear warm-up, cosine decay); the head is thrown away, the backbone's state
dict is the checkpoint. Inputs are :func:`bench.data.fractals.augment`'s ``(1, 16, 16)`` images,
the embedded scenarios' input shape. Nothing of any scenario's data is read.

Deterministic from ``seed`` at a fixed thread count (the manifest records both); the losses of
the first steps are stored so that a test can check a re-run reproduces them.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import fractals
from bench.models.backbones import build_backbone
from bench.models.pretrained import MANIFEST, WEIGHTS_DIR, checkpoint_state, manifest, sha256

#: the committed checkpoints' backbones: keywords (the embedded scenarios' encoders) and file
BACKBONES: dict[str, dict[str, Any]] = {
    "resnet": {"backbone_kwargs": {"widths": (8, 16, 32, 64)}, "file": "resnet.pt"},
    "swin_embedded": {"backbone_kwargs": {}, "file": "swin_embedded.pt"},
}
INPUT_SHAPE = (1, 16, 16)
#: losses of this many first steps go into the manifest (the reproduction test compares them)
FIRST_STEPS = 5


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining: the fractal bank, the optimisation and the seed."""

    classes: int = 200
    variants: int = 24
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    threads: int = 1


#: a test-sized pretraining (seconds): the same code path
SMOKE = PretrainConfig(classes=6, variants=3, steps=6, batch_size=16)


@dataclass
class PretrainResult:
    state: dict[str, torch.Tensor]
    losses: list[float]
    accuracy: float
    seconds: float
    parameters: int


class Classifier(nn.Module):
    """The backbone, global average pooling and a linear layer over the fractal categories."""

    def __init__(self, backbone: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def build(backbone: str) -> nn.Module:
    kwargs = BACKBONES[backbone]["backbone_kwargs"]
    return build_backbone(backbone, in_channels=INPUT_SHAPE[0], input_shape=INPUT_SHAPE,
                          init="scratch", **kwargs)


def pretrain(backbone: str, cfg: PretrainConfig, stop_after: int | None = None,
             progress: bool = False) -> PretrainResult:
    """Pretrain ``backbone`` with ``cfg``; ``stop_after`` ends after that many steps (with the
    full run's schedule: the first steps are those of the full run)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} for pretraining; "
                         f"choose from {', '.join(BACKBONES)}")
    from tqdm import tqdm

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        bank = fractals.make_bank(cfg.classes, cfg.variants, cfg.seed)
        torch.manual_seed(cfg.seed)
        net = build(backbone)
        model = Classifier(net, int(net.out_channels), bank.classes)
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        steps = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
        losses: list[float] = []
        correct = seen = 0
        model.train()
        bar = tqdm(range(steps), desc=f"pretrain {backbone}", disable=not progress,
                   unit="step", mininterval=1.0)
        for step in bar:
            idx = torch.randint(0, len(bank.labels), (cfg.batch_size,), generator=gen)
            x = fractals.augment(bank.images[idx], INPUT_SHAPE[-1], gen)
            y = bank.labels[idx]
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, cfg)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if step >= steps - max(1, steps // 10):  # training accuracy over the last 10 %
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        return PretrainResult(checkpoint_state(net), losses, correct / max(1, seen),
                              time.perf_counter() - start,
                              sum(p.numel() for p in net.parameters()))
    finally:
        torch.set_num_threads(previous)


def command(backbone: str, cfg: PretrainConfig) -> str:
    """The command that reproduces a checkpoint made with ``cfg``."""
    extra = "" if cfg.seed == 0 else f" --seed {cfg.seed}"
    smoke = " --smoke" if replace(cfg, seed=0) == SMOKE else ""
    return f"python -m bench pretrain --backbone {backbone}{extra}{smoke}"


def save(result: PretrainResult, path: Path) -> str:
    """Write the checkpoint to ``path`` (atomically); its SHA-256. Serialised in memory first:
    ``torch.save`` to a file names the archive after the file, so that the same weights saved
    under two names would differ byte for byte."""
    buffer = io.BytesIO()
    torch.save(result.state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return sha256(path)


def install(backbone: str, cfg: PretrainConfig, result: PretrainResult) -> None:
    """Write the checkpoint into the package's weights folder and record it in the
    manifest."""
    import fcntl

    target = WEIGHTS_DIR / BACKBONES[backbone]["file"]
    digest = save(result, target)
    with open(WEIGHTS_DIR / ".manifest.lock", "w") as lock:  # two backbones made in parallel
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = manifest()
        entries[backbone] = _entry(backbone, cfg, result, target.name, digest)
        MANIFEST.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")


def _entry(backbone: str, cfg: PretrainConfig, result: PretrainResult, file: str,
           digest: str) -> dict[str, Any]:
    return {
        "file": file,
        "sha256": digest,
        "backbone_kwargs": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in BACKBONES[backbone]["backbone_kwargs"].items()},
        "input_shape": list(INPUT_SHAPE),
        "command": command(backbone, cfg),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "objective": "fractal-category classification (FractalDB-style IFS, 16x16)",
        "first_losses": [round(v, 6) for v in result.losses[:FIRST_STEPS]],
        "final_train_accuracy": round(result.accuracy, 4),
        "parameters": result.parameters,
        "seconds": round(result.seconds, 1),
        "torch": torch.__version__,
    }
