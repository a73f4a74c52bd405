"""The committed pretrained weights of the embedded backbones (``backbone.init=pretrained``).

Both papers start every method from ImageNet weights (MoLA App. B: ResNet-18; MTLoRA §4.1:
Swin-T, frozen). No weights can be downloaded on the machines this benchmark is built on, so it
makes its own: ``python -m bench pretrain --backbone resnet|swin_embedded`` pretrains the
embedded backbones on formula-driven fractals (:mod:`bench.data.fractals`,
:mod:`bench.run.pretrain`) and ``--install`` writes the checkpoint into ``weights/`` beside this
module, with an entry in ``weights/manifest.json``: the file's SHA-256, the backbone keywords it
fits, the command and seed that made it, its pretraining config and the losses of its first
steps (checked by the tests).

Loading checks the file's SHA-256 against the manifest; :func:`pretrained_problem` says at
planning time, in one line, why a run cannot have the weights (no entry, a modified file, a
backbone of another shape).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"
#: ``backbone.init`` values: random initialisation, or the committed pretrained checkpoint
INITS = ("scratch", "pretrained")
#: the keywords that fix each backbone's parameter shapes (a checkpoint fits a backbone when
#: these agree; ``img_size`` only when the run sets it)
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "resnet": ("widths", "blocks"),
    "swin_embedded": ("patch_size", "window_size", "embed_dim", "depths", "num_heads",
                      "img_size"),
}


class WeightsError(ValueError):
    """The committed weights cannot be used: one line naming the problem and the fix."""


def manifest() -> dict[str, Any]:
    """The manifest of the committed checkpoints (``{}`` when there is none)."""
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def _verified(path: str, size: int, mtime_ns: int, expected: str) -> str | None:
    actual = sha256(Path(path))
    return None if actual == expected else actual


def entry(backbone: str) -> dict[str, Any]:
    """The manifest entry of ``backbone``'s committed checkpoint, verified: the file exists and
    its SHA-256 is the manifest's (:class:`WeightsError` otherwise)."""
    entries = manifest()
    if backbone not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise WeightsError(f"backbone {backbone!r} has no committed pretrained weights "
                           f"(committed: {known}); use --set backbone.init=scratch")
    item = entries[backbone]
    path = WEIGHTS_DIR / item["file"]
    remake = f"re-make it with `{item['command']} --install`"
    if not path.is_file():
        raise WeightsError(f"pretrained weights {path} are missing: restore them "
                           f"(git checkout -- {path.name}) or {remake}")
    stat = path.stat()
    actual = _verified(str(path), stat.st_size, stat.st_mtime_ns, item["sha256"])
    if actual is not None:
        raise WeightsError(f"pretrained weights {path} have SHA-256 {actual[:12]}..., the "
                           f"manifest says {item['sha256'][:12]}...: restore the file "
                           f"(git checkout) or {remake}")
    return item


def fits(backbone: str, kwargs: dict[str, Any], settings: Any) -> str | None:
    """Why a ``backbone`` built with ``kwargs`` cannot take its committed checkpoint, or None;
    ``settings`` is the backbone's declared settings model (defaults fill what is not given)."""
    item = entry(backbone)
    resolved, committed = (settings(**{k: tuple(v) if isinstance(v, list) else v  # JSON lists
                                       for k, v in given.items() if k in settings.model_fields})
                           for given in (kwargs, item["backbone_kwargs"]))
    for key in SHAPE_KEYS.get(backbone, ()):
        mine = getattr(resolved, key, None)
        if key == "img_size" and mine is None:
            continue
        theirs = getattr(committed, key, None)
        if key == "img_size" and theirs is None:
            theirs = item["input_shape"][-1]
        if mine != theirs:
            return (f"the committed pretrained {backbone} has {key}={theirs}, this run "
                    f"{key}={mine}; use --set backbone.init=scratch for another shape")
    return None


def pretrained_problem(backbone: str, kwargs: dict[str, Any], settings: Any) -> str | None:
    """Why a run of ``backbone`` with ``kwargs`` (``init=pretrained``) cannot load its weights,
    or None (checked when planning: one line, exit code 2)."""
    try:
        return fits(backbone, kwargs, settings)
    except WeightsError as err:
        return str(err)


def load_pretrained(model: nn.Module, backbone: str) -> None:
    """Load ``backbone``'s committed checkpoint into ``model`` (hash-checked; every tensor must
    fit, else :class:`WeightsError`)."""
    item = entry(backbone)
    state = torch.load(WEIGHTS_DIR / item["file"], map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()[:160]
        raise WeightsError(f"the committed pretrained {backbone} does not fit this backbone "
                           f"({detail}); use --set backbone.init=scratch") from None


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the backbone's persistent tensors, contiguous clones."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
