"""LibMTL 1.1.5 on torch 2.x: every fix the suite needs, in one place.

LibMTL's only PyPI release (1.1.5, Dec 2021) predates torch 2. We keep its contract
(:class:`AbsWeighting` for weightings, :class:`AbsArchitecture` for architectures, the weighting
mixed into the architecture as LibMTL's ``Trainer`` does) and repair what is broken here. Each fix
is numbered; ``tests/test_compat.py`` has one test per fix, which fails on unpatched LibMTL.

1. ``import LibMTL`` fails: ``LibMTL/model/resnet.py`` imports
   ``torchvision.models.utils.load_state_dict_from_url``, which moved to ``torch.hub``.
   -> :func:`import_libmtl` registers a one-attribute shim module before the first import.
2. ``LibMTL.weighting.CAGrad`` imports ``scipy``, an undeclared dependency.
   -> ``scipy`` is a declared dependency of this project (``pyproject.toml``).
3. ``AbsArchitecture.zero_grad_share_params`` calls ``encoder.zero_grad()``, which sets grads to
   ``None`` since torch 2.0; ``AbsWeighting._reset_grad`` then writes ``param.grad.data`` and
   crashes for every gradient-surgery weighting (PCGrad, MGDA, CAGrad, GradVac, IMTL, ...).
   -> :class:`CompatArchitecture` zeroes in place (``set_to_none=False``) and
   :class:`CompatWeighting` assigns ``param.grad`` when it is ``None``.
4. ``CAGrad.backward`` hard-codes three tasks (``x.reshape(1, 3)``).
   -> :class:`methods/cagrad.py` solves the CAGrad dual for any number of tasks.
5. Weightings read their hyper-parameters from ``kwargs[...]`` with no defaults (GradVac ``beta``,
   MGDA ``mgda_gn``, CAGrad ``calpha``/``rescale``...), and some support only one ``rep_grad``
   mode. -> every registered weighting declares its defaults and supported modes
   (:class:`WeightingSpec`), and the engine always passes them explicitly.
6. ``Cross_stitch``, ``PLE`` and ``MTAN`` reach into a ResNet-shaped encoder (``conv1``,
   ``layer1..4``). -> our architectures use the staged-encoder protocol of
   :mod:`bench.models.backbones` (``stem`` + ``stages``) and are checked at planning time.
7. ``AbsWeighting.backward`` is declared as a ``@property``: reading ``model.backward`` on a class
   that does not override it *calls* it with no arguments. -> :class:`CompatWeighting` declares a
   plain abstract method.
8. LibMTL's ``Trainer`` runs one forward pass per task in multi-input mode. -> the engine
   (:mod:`bench.run.engine`) runs all tasks' batches through the shared encoder in one pass for
   every method (``train.forward=per_task`` keeps LibMTL's behaviour).
9. ``AbsArchitecture.forward`` tests ``isinstance(s_rep, list) and not multi_input`` for "all
   tasks share one representation" — the condition is inverted. -> :class:`CompatArchitecture`
   computes it correctly.
10. ``MGDA._find_min_norm_element`` never increments ``iter_count`` in its
    ``while iter_count < MAX_ITER`` loop: a problem that does not meet the stop criterion (e.g. a
    Gram matrix that overflows float32) loops forever (were the loop bounded, it would fall off
    and return ``None``). -> ``methods/mgda.py`` has its own solver, bounded to 250 iterations,
    which returns the last iterate.
11. ``AbsWeighting._grad2vec`` allocates its buffer on the CPU whatever ``self.device`` is.
    -> :class:`CompatWeighting` allocates on the parameters' device.
12. DWA and GradNorm read ``self.epoch`` and ``self.train_loss_buffer`` (per-task mean training
    loss of each epoch), which LibMTL's ``Trainer`` writes into the model; our engine does not.
    -> :class:`EpochLossTracker` keeps both itself: it averages the losses passed to ``backward``
    and closes an epoch when the model goes back to training mode after an evaluation (the engine
    calls ``model.eval()`` at the end of every epoch and ``model.train()`` at the next start).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.data.search import Distribution
from bench.data.settings import Settings, settings_from_defaults
from bench.registry import package_file

_SHIM_NAME = "torchvision.models.utils"


def install_import_shim() -> None:
    """Fix 1: provide ``torchvision.models.utils.load_state_dict_from_url`` for LibMTL.

    The shim is registered under the module's full name, so LibMTL's ``from
    torchvision.models.utils import ...`` finds it without importing torchvision at all."""
    # an old torchvision, which still ships the module, needs nothing; it is looked for on disk:
    # importing torchvision to find out would cost a LibMTL user ~1.5 s (it imports dynamo)
    if _SHIM_NAME in sys.modules or package_file("torchvision", "models", "utils.py"):
        return
    shim = types.ModuleType(_SHIM_NAME)
    shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    sys.modules[_SHIM_NAME] = shim


def import_libmtl() -> types.ModuleType:
    install_import_shim()
    import LibMTL

    return LibMTL


import_libmtl()

from LibMTL.architecture.abstract_arch import AbsArchitecture  # noqa: E402
from LibMTL.weighting.abstract_weighting import AbsWeighting  # noqa: E402


class CompatWeighting(AbsWeighting):
    """``AbsWeighting`` with fixes 3, 7 and 11. Every weighting of the suite derives from it.

    **Tasks absent from a batch.** With pooled sampling (``train.sampling=pooled``, MoLA's
    reference on MedMNIST) a batch may hold no sample of some tasks: their loss is an exact zero
    attached to the graph (:func:`bench.run.engine.batch_losses`), so their gradient row is
    exactly zero. Before every ``backward`` the engine sets :attr:`batch_tasks` (one bool per
    task; ``None``: all present). Then:

    * :meth:`_compute_grad` (LibMTL's per-task gradients) runs no backward pass for an absent
      task; its row stays exactly zero;
    * a weighting that *solves* for task weights from the gradients (a min-norm point, an
      inverse, a dual: MGDA, IMTL, CAGrad) solves on the present rows only and maps its weights
      back, absent tasks weighted 0::

          grads = self._compute_grad(losses, mode="backward")   # (T, D); absent rows are 0
          rows, present = self.present_rows(grads)              # (k, D) and their task indices
          weights = solve(rows)                                 # k weights
          self._reset_grad(weights @ rows)
          return self.full_weights(weights, present)            # (T,), 0 for absent tasks

    * a weighting that only adds or projects rows (EW, PCGrad, GradVac) needs nothing: a zero
      row adds nothing and nothing is projected on it.

    A weighting that detects absent tasks itself can use :meth:`present_tasks` (or test its
    gradient rows for exact zeros: the same tasks).
    """

    #: whether ``backward`` needs one gradient per task of the shared parameters (or of the
    #: representation), i.e. T backward passes per step (documentation and cost estimates).
    needs_task_gradients: bool = True
    #: whether the engine calls :meth:`after_step` after every optimizer step (FAMO)
    needs_losses_after_step: bool = False
    #: set by the engine before each ``backward``: which tasks have samples in the batch
    batch_tasks: list[bool] | None = None
    #: set by the engine under data parallelism: maps this process's ``T x D`` task-gradient
    #: matrix to the average over processes (:func:`bench.run.parallel.average`)
    task_grad_sync: Any = None
    #: set by the engine under fp16: the gradient scaler's scale ``s``. Gradients entering the
    #: network are multiplied by ``s``; :meth:`_compute_grad` divides the task gradients by it
    #: before the weighting sees them and :meth:`_reset_grad` multiplies the direction back
    #: (:mod:`bench.run.precision`)
    grad_scale: float = 1.0

    def present_tasks(self) -> list[int]:
        """Indices of the tasks with samples in the current batch (all when unknown)."""
        if self.batch_tasks is None:
            return list(range(self.task_num))
        return [t for t, here in enumerate(self.batch_tasks) if here]

    def present_rows(self, grads: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The rows of ``grads`` (T, ...) of the present tasks, and their task indices. A row
        that is exactly zero counts as absent too (a task absent from a batch the engine did not
        describe, e.g. a weighting called directly): it has no direction to weigh; when every
        row is zero, all rows are kept."""
        nonzero = grads.reshape(len(grads), -1).ne(0).any(dim=1).tolist()
        present = [t for t in self.present_tasks() if nonzero[t]] or self.present_tasks()
        if len(present) == self.task_num:
            return grads, present
        return grads[torch.tensor(present, dtype=torch.long, device=grads.device)], present

    def full_weights(self, weights: Any, present: list[int]) -> np.ndarray:
        """Task weights for all T tasks from the weights of the ``present`` ones (0 elsewhere)."""
        values = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights
        out = np.zeros(self.task_num)
        out[present] = np.asarray(values, dtype=np.float64).reshape(-1)
        return out

    def _compute_grad(self, losses: torch.Tensor, mode: str, rep_grad: bool = False) -> Any:
        """LibMTL's per-task gradients (rows ``(T, D)``, or per-task representation gradients
        with ``rep_grad``), without the backward passes of tasks absent from the batch: their
        rows stay exactly zero."""
        present = self.present_tasks()
        if not rep_grad:
            grads = torch.zeros(self.task_num, self.grad_dim, device=self.device)
        elif not isinstance(self.rep, dict):
            grads = torch.zeros(self.task_num, *self.rep.size(), device=self.device)
        else:
            grads = [torch.zeros(*self.rep[task].size(), device=self.device)
                     for task in self.task_name]
        for i, tn in enumerate(present):
            last = i + 1 == len(present)
            if rep_grad:
                losses[tn].backward(retain_graph=not last)
                grads[tn] = self.rep_tasks[self.task_name[tn]].grad.data.clone()
            elif mode == "backward":
                losses[tn].backward(retain_graph=not last)
                grads[tn] = self._grad2vec()
            elif mode == "autograd":
                grad = torch.autograd.grad(losses[tn], self.get_share_params(),
                                           retain_graph=True)
                grads[tn] = torch.cat([g.reshape(-1) for g in grad])
            else:
                raise ValueError(f"no {mode!r} mode for gradient computation")
            if not rep_grad:
                self.zero_grad_share_params()
        if not rep_grad and self.grad_scale != 1.0:  # fp16: the weighting sees true gradients
            grads = grads / self.grad_scale
        if self.task_grad_sync is not None:
            if rep_grad:
                raise RuntimeError("representation gradients are per sample: they cannot be "
                                   "averaged over data-parallel processes")
            grads = self.task_grad_sync(grads)
        return grads

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:  # fix 7
        """Backpropagate the step's task losses ``(T,)`` (an absent task's is an exact 0 on the
        graph); return this step's task weights (logged per epoch in the record's history as
        mean/min/max), or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def after_step(self, losses_after: torch.Tensor) -> None:
        """With ``needs_losses_after_step``: the same batch's task losses ``(T,)``, detached,
        recomputed after ``optimizer.step()`` (same loss scaling, absent tasks exact 0)."""

    def _grad2vec(self) -> torch.Tensor:  # fix 11
        grads = [
            p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)
            for p in self.get_share_params()
        ]
        return torch.cat(grads) if grads else torch.zeros(0)

    def _reset_grad(self, new_grads: torch.Tensor) -> None:  # fix 3
        offset = 0
        for param in self.get_share_params():
            n = param.numel()
            value = new_grads[offset : offset + n].reshape(param.shape).to(param.dtype).clone()
            if self.grad_scale != 1.0:  # fp16: every .grad holds s x the true gradient
                value = value * self.grad_scale
            if param.grad is None:
                param.grad = value
            else:
                param.grad.copy_(value)
            offset += n


class EpochLossTracker:
    """Fix 12: ``self.epoch`` and ``self.train_loss_buffer`` as LibMTL's ``Trainer`` provides them.

    Mix it in before the weighting and call :meth:`record_losses` at the start of ``backward``.
    ``train_loss_buffer[t, e]`` is the mean loss of task ``t`` over the steps of epoch ``e``.
    """

    def _tracker_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_epoch_tracker")
        if state is None:
            state = {"sum": None, "count": 0, "closed": []}
            self.__dict__["_epoch_tracker"] = state
            self.__dict__["epoch"] = 0
            self.__dict__["train_loss_buffer"] = np.zeros((0, 0))
        return state

    def record_losses(self, losses: torch.Tensor) -> None:
        state = self._tracker_state()
        values = torch.stack([loss.detach() for loss in losses]).double().cpu().numpy()
        state["sum"] = values if state["sum"] is None else state["sum"] + values
        state["count"] += 1
        # the running mean of the current epoch is visible as its column (LibMTL fills it last)
        self.__dict__["train_loss_buffer"] = np.stack(
            [*state["closed"], state["sum"] / state["count"]], axis=1)

    def close_epoch(self) -> None:
        state = self._tracker_state()
        if state["count"] == 0:
            return
        state["closed"].append(state["sum"] / state["count"])
        state["sum"], state["count"] = None, 0
        self.__dict__["train_loss_buffer"] = np.stack(state["closed"], axis=1)
        self.__dict__["epoch"] = len(state["closed"])

    def train(self, mode: bool = True):  # type: ignore[override]
        if mode and not getattr(self, "training", True):
            self.close_epoch()
        return super().train(mode)  # type: ignore[misc]


class CompatArchitecture(AbsArchitecture):
    """``AbsArchitecture`` with fixes 3 and 9, and a batch that may mix tasks (fix 8).

    ``forward(inputs, task_name=None, task_ids=None)``:

    * single-input scenarios: every task's decoder sees every sample (``task_ids`` is ``None``);
    * multi-input scenarios: ``inputs`` holds the samples of several tasks and ``task_ids[n]`` is
      the index of the task of sample ``n``; each decoder sees only its own task's rows. With
      ``task_name`` given, the batch holds that task only (LibMTL's per-task forward).

    Subclasses implement :meth:`encode`, which returns one representation for all tasks or a list
    with one representation per task (rows aligned with ``inputs``).
    """

    def encode(
        self, inputs: torch.Tensor, task_ids: torch.Tensor | None
    ) -> torch.Tensor | list[torch.Tensor]:
        return self.encoder(inputs)

    def forward(
        self,
        inputs: torch.Tensor,
        task_name: str | None = None,
        task_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if task_name is not None and task_ids is None and self.multi_input:
            index = self.task_name.index(task_name)
            task_ids = torch.full((inputs.shape[0],), index, dtype=torch.long, device=inputs.device)
        rep = self.encode(inputs, task_ids)
        per_task = isinstance(rep, list)
        same_rep = not per_task and not self.multi_input  # fix 9
        out: dict[str, torch.Tensor] = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None and task != task_name:
                continue
            task_rep = rep[tn] if per_task else rep
            if self.multi_input and task_ids is not None and task_name is None:
                rows = task_ids == tn
                if not bool(rows.any()):  # absent from this batch (pooled sampling)
                    continue
                task_rep = task_rep[rows]
            task_rep = self._prepare_rep(task_rep, task, same_rep)
            out[task] = self.decoders[task](task_rep)
        return out

    def _prepare_rep(self, rep: torch.Tensor, task: str, same_rep: bool | None = None
                     ) -> torch.Tensor:
        """LibMTL's representation split (``rep_grad``); under fp16 loss scaling the decoders'
        gradient reaching the representation copy is divided by the scale (the weighting sees
        true representation gradients) and what the weighting sends back into the encoder is
        multiplied by it (:mod:`bench.run.precision`)."""
        out = super()._prepare_rep(rep, task, same_rep)
        scale = float(getattr(self, "grad_scale", 1.0))
        if self.rep_grad and scale != 1.0:
            if rep.requires_grad and not getattr(rep, "_bench_scaled", False):
                rep._bench_scaled = True  # type: ignore[attr-defined]  # one rep, T tasks
                rep.register_hook(lambda grad: grad * scale)
            out.register_hook(lambda grad: grad / scale)
        return out

    def zero_grad_share_params(self) -> None:  # fix 3
        for p in self.get_share_params():
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()


@dataclass(frozen=True)
class WeightingSpec:
    """A registered weighting: its class, explicit defaults and supported modes (fix 5), and its
    declared settings (``weighting.*``: types and ranges, :mod:`bench.data.settings`; inferred
    from ``defaults`` when the plugin declares none)."""

    cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    rep_grad: tuple[bool, ...] = (False,)
    description: str = ""
    settings: type[Settings] | None = None
    #: equal-budget search: a distribution per ``weighting.*`` key (:mod:`bench.data.search`)
    search: dict[str, Distribution] = field(default_factory=dict)
    #: heterogeneity types it applies to (None: all), e.g. the domain-generalisation weightings
    #: (GroupDRO, VREx, EQRM) over domains that share one label space
    scenarios: tuple[str, ...] | None = None
    #: optional packages it needs (import names) and the install extra that brings them:
    #: planning refuses it, naming the extra, when one is missing
    requires: tuple[str, ...] = ()
    extra: str = ""

    @property
    def settings_model(self) -> type[Settings]:
        return self.settings or settings_from_defaults(self.cls.__name__, self.defaults)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered architecture: its class, defaults, and what it needs of the scenario."""

    cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: declared settings (``arch.*``: types and ranges, :mod:`bench.data.settings`); inferred
    #: from ``defaults`` when the plugin declares none
    settings: type[Settings] | None = None
    #: settings added with a default that changed what earlier runs did, with the value those
    #: runs implied: a recorded identity without the key rebuilds with it, and a run set to it
    #: leaves the key out of its identity (so it matches those records)
    legacy: dict[str, Any] = field(default_factory=dict)
    #: encoder protocol the architecture needs ("any", "staged", "conv", "swin", "conv_or_swin";
    #: the backbones each accepts: ``bench.models.method.ENCODER_BACKBONES``)
    needs_encoder: str = "any"
    #: heterogeneity types it applies to (None: all)
    scenarios: tuple[str, ...] | None = None
    #: backbone it brings itself (e.g. MTLoRA's Swin); None: the scenario's backbone
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    #: overrides in ``--set`` syntax applied under the ``paper`` profile, before the user's:
    #: the paper's own scale where it differs from the CPU-sized defaults (e.g. MTLoRA's
    #: pretrained Swin-T and Table 1 ranks)
    paper_scale: dict[str, Any] = field(default_factory=dict)
    #: True when the architecture may run all tasks' batches in one pass (fix 8)
    supports_fused_multi_input: bool = True
    #: False when its forward bypasses ``_prepare_rep`` (no representation gradients, so no
    #: rep_grad weighting such as MGDA-UB or GradDrop)
    supports_rep_grad: bool = True
    #: equal-budget search: a distribution per ``arch.*`` key (:mod:`bench.data.search`)
    search: dict[str, Distribution] = field(default_factory=dict)

    @property
    def settings_model(self) -> type[Settings]:
        return self.settings or settings_from_defaults(self.cls.__name__, self.defaults)
