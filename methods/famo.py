"""FAMO — fast adaptive multitask optimization (Liu et al., NeurIPS 2023, §3, Eq. 4-7,
Algorithm 1-2).

FAMO decreases all task losses at about the same *relative* rate with one backward pass (no
per-task gradients). With logits ``xi`` (``z = softmax(xi)``) and lower bounds ``b_t = 0``:

* model update (Eq. 5-6): backpropagate ``sum_t c z_t log(L_t - b_t + eps)`` with
  ``c = (sum_t z_t / (L_t - b_t + eps))^{-1}`` held constant — a convex combination of the task
  gradients ``grad L_t`` with weights ``c z_t / (L_t - b_t + eps)``;
* logit update (Eq. 7, after the optimizer step, from the losses of the **same batch**):
  ``delta_t = log(L_t^before + eps) - log(L_t^after + eps)``, then one Adam step on ``xi`` along
  ``(dz/dxi)^T delta`` with learning rate ``w_lr`` and weight decay ``gamma``.

Defaults ``w_lr = 0.025`` and ``gamma = 1e-3`` (the paper's Algorithm 2, LibMTL's ``FAMO_w_lr`` /
``FAMO_w_gamma``; the official code uses ``gamma = 1e-5``), ``eps = 1e-8``.

Engine contract: ``needs_losses_after_step = True``; the engine calls
:meth:`FAMO.after_step` with the task losses recomputed on the same batch after
``optimizer.step()`` (README, "Add a method": weightings that learn after the step). Without
that call the logits stay at 0 (the update is
the ``z = 1/T`` one). Own implementation (torchjd 0.18 has ``torchjd.scalarization.FAMO``; ours
gives the same loss, gradients and logits when every task is present — tested) because an
absent task (loss exactly 0) would get ``log(eps)`` and ``c -> 0``: a silent zero update. Here
the softmax, ``c`` and the logit step run over the present tasks only; an absent task's logit
gets a zero gradient. The logits and their Adam state live on the weighting object (not model
parameters: the engine's optimizer never sees them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.torchjd_weighting import present_losses


class FAMO(CompatWeighting):
    """FAMO's log-loss combination with logits updated after the optimizer step."""

    needs_task_gradients = False
    #: the engine must call :meth:`after_step` with the same batch's losses after the step
    needs_losses_after_step = True

    def _famo_state(self, device: torch.device) -> dict[str, Any]:
        state = self.__dict__.get("_famo")
        if state is None:
            logits = torch.zeros(self.task_num, device=device, requires_grad=True)
            state = {"logits": logits, "optimizer": None, "before": None, "present": None,
                     "kwargs": {}}
            self.__dict__["_famo"] = state
        return state

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        state = self._famo_state(losses.device)
        eps = float(kwargs["eps"])
        present = present_losses(losses)
        state.update(before=losses.detach().clone(), present=present, kwargs=kwargs)
        weights = np.zeros(self.task_num)
        if not bool(present.any()):
            losses.sum().backward()  # every loss is an exact 0: nothing to balance
            return weights
        z = torch.softmax(state["logits"].detach()[present], 0)
        shifted = losses[present] - float(kwargs["min_loss"]) + eps
        c = 1.0 / (z / shifted.detach()).sum()
        (c * (z * torch.log(shifted)).sum()).backward()
        weights[present.cpu().numpy()] = (c * z / shifted.detach()).double().cpu().numpy()
        return weights

    def after_step(self, losses_after: torch.Tensor) -> None:
        """Eq. 7: one Adam step on the logits from the losses of the same batch after the step."""
        state = self.__dict__.get("_famo")
        if state is None or state["before"] is None:
            raise RuntimeError("FAMO.after_step() must follow backward() on the same batch")
        kwargs, present = state["kwargs"], state["present"]
        eps, low = float(kwargs["eps"]), float(kwargs["min_loss"])
        logits = state["logits"]
        if state["optimizer"] is None:
            state["optimizer"] = torch.optim.Adam([logits], lr=float(kwargs["w_lr"]),
                                                  weight_decay=float(kwargs["gamma"]))
        delta = (torch.log(state["before"] - low + eps)
                 - torch.log(losses_after.detach().to(logits.device) - low + eps))
        grad = torch.zeros_like(logits)
        if bool(present.any()):
            with torch.enable_grad():
                sub = logits[present]
                z = torch.softmax(sub, 0)
                (grad_sub,) = torch.autograd.grad(z, sub, grad_outputs=delta[present])
            grad[present] = grad_sub
        logits.grad = grad
        state["optimizer"].step()
        logits.grad = None
        state["before"] = None

    @property
    def famo_logits(self) -> torch.Tensor:
        """The current logits ``xi`` (zeros before the first step)."""
        return self._famo_state(torch.device("cpu"))["logits"].detach().clone()


register_weighting("famo", FAMO,
                   description="FAMO: balanced relative loss decrease with learnt logits",
                   defaults={"w_lr": 0.025, "gamma": 1e-3, "eps": 1e-8, "min_loss": 0.0},
                   rep_grad=(False,))
register_method("famo", architecture="hps", weighting="famo",
                description="hard parameter sharing trained with FAMO",
                paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023",
                family="loss_weighting")
