"""The backbone registry, declared without torch: ``python -m bench list backbones`` reads the
builders' registrations from their modules' source (:mod:`bench.registry`) and imports
:mod:`bench.models.backbones` or :mod:`bench.models.mtlora` only when an encoder is built."""

from __future__ import annotations

from typing import Any

from bench.registry import Registry

#: encoders by name; ``modules``: the modules whose ``@backbones.register`` builders define them
backbones: Registry[Any] = Registry(
    "backbone", modules=("bench.models.backbones", "bench.models.mtlora"))
