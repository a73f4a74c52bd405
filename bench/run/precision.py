"""Mixed precision (``--set train.precision=bf16|fp16|fp32``) and the device a run trains on.

* The forward pass runs under :func:`torch.autocast` (bf16 or fp16); the task losses are
  computed in float32 from the outputs cast back to float32 (:func:`bench.run.engine.batch_losses`),
  and the parameters and their gradients stay float32 — so the per-task gradients that gradient
  weightings (PCGrad, MGDA, CAGrad, ...) compare are float32 vectors whatever the precision.
* fp16 needs loss scaling: a :class:`torch.amp.GradScaler` keeps the scale ``s``. Every gradient
  that enters the network is multiplied by ``s`` (a hook on the task losses, and on the shared
  representation for weightings on representation gradients), so that small fp16 activation
  gradients do not underflow; :class:`bench.models.compat.CompatWeighting` divides the task
  gradients by ``s`` before the weighting sees them and multiplies the direction it writes back,
  and the weighting's own parameters (e.g. Uncertainty Weighting's log-variances, whose
  gradients do not pass through the network) are scaled alike, so that every ``.grad`` holds
  ``s`` × the true gradient when ``GradScaler.unscale_`` divides it back (steps with an inf or NaN
  are skipped and the scale is lowered, as usual).
* bf16 has float32's exponent range: no scaler. On the CPU autocast supports bf16; fp16 is
  refused there when the run is planned (one line, exit 2) — it is emulated and slow on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

#: autocast dtype of each low precision
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    """``$BENCH_DEVICE`` if set, else CUDA when available, else the CPU."""
    name = os.environ.get("BENCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot train on ``device`` (one line), or ``None``."""
    if precision == "fp16" and device.type != "cuda":
        return (f"train.precision=fp16 needs a CUDA device (this run would train on "
                f"{device.type}, where float16 autocast is emulated and slow): use "
                "train.precision=bf16 on the CPU, or fp32")
    if (precision == "bf16" and device.type == "cuda" and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        return ("train.precision=bf16 is not supported by this GPU: use train.precision=fp16 "
                "(with a gradient scaler) or fp32")
    return None


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's autocast context for ``precision`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, ``None`` otherwise (bf16 and fp32 need none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def current_scale(scaler: torch.amp.GradScaler | None, device: torch.device) -> float:
    """The scaler's scale for this step (1 without a scaler); ``scaler.scale`` of a one is
    the public way to read it (and to start the scaler's state before ``unscale_``)."""
    if scaler is None:
        return 1.0
    return float(scaler.scale(torch.ones((), device=device)))


def scale_entering(tensor: torch.Tensor, scale: float) -> None:
    """Multiply every gradient that flows back into the graph through ``tensor`` by ``scale``
    (loss scaling at the network's boundary; nothing when ``scale`` is 1)."""
    if scale != 1.0 and tensor.requires_grad:
        tensor.register_hook(lambda grad: grad * scale)


def scale_weighting_grads(model: torch.nn.Module, scale: float) -> None:
    """Multiply the gradients of the weighting's own parameters (created by ``init_param``,
    e.g. log-variances) by ``scale``: they do not pass through the scaled network, and
    ``GradScaler.unscale_`` divides every gradient of the optimiser by the scale."""
    if scale == 1.0:
        return
    names = set(getattr(model, "weighting_parameter_names", ()))
    for name, param in model.named_parameters():
        if name in names and param.grad is not None:
            param.grad.mul_(scale)
