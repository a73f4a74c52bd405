"""Data parallelism for every method (``--set train.ddp=N``): one run on N processes.

:func:`launch` starts N processes — forked from a fork server that loaded the engine and the
plugins once — joined by :mod:`torch.distributed` (gloo on the CPU, NCCL on GPUs: rank ``r`` on
``cuda:r``) through a file store in a fresh temporary folder
(no port: parallel runs and tests never collide). Every rank draws the same global batch indices
(the same seeded generator) and takes its shard (:func:`shard`). What makes the update that of
one process with the global batch, for every weighting:

* **Losses.** Each task's local mean loss is weighted by its share of the task's global rows and
  given the value of the global mean loss (:func:`global_losses`: the forward value is the
  all-reduced one, the backward goes to the local loss). A weighting that reads loss values
  (DWA, UW, GLS, FAMO, DB-MTL's ``log L``, GradNorm's loss ratios...) reads the same values on
  every rank, equal to those of the global batch; by the chain rule the average over ranks of
  the local gradients is then the gradient of the global objective.
* **Task gradients.** Gradient weightings (PCGrad, MGDA, CAGrad, Nash-MTL, ...) compute their
  ``T x D`` matrix of per-task gradients with ``CompatWeighting._compute_grad``; the engine sets
  its ``task_grad_sync`` to :func:`average`, so every rank's weighting sees the all-reduced
  (averaged) matrix — the global batch's task gradients — and writes the same direction.
  Weightings on representation gradients (MGDA-UB, GradDrop, ...) are refused at planning: a
  representation's gradient is per sample, one shard's rows are not the batch's.
* **Final gradients.** After the weighting's backward, every trainable parameter's gradient is
  averaged over the ranks (:func:`average_gradients`): the decoders' gradients and, for loss
  weightings such as the plain sum, all of them.
* **BatchNorm** layers compute their statistics over the global batch (:func:`sync_batchnorm`,
  also on the CPU where ``torch.nn.SyncBatchNorm`` is CUDA-only), so the forward pass, the
  running statistics and their gradients are those of one process.

Rank 0 evaluates, selects and returns the result (the record is written from it, by the parent
process); the other ranks only train. Per-batch statistics of auxiliary losses (CORAL, MMD,
MoLA-Router's TwD, SelfReg's pairs) are computed per shard, as in any data-parallel training.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel run."""

    rank: int
    world: int

    @property
    def lead(self) -> bool:
        """Whether this process evaluates and returns the result (rank 0)."""
        return self.rank == 0


_CURRENT: Rank | None = None


def current() -> Rank | None:
    """This process's rank in the running data-parallel run, or ``None`` (one process)."""
    return _CURRENT


def shard(index: torch.Tensor, rank: Rank) -> torch.Tensor:
    """This rank's contiguous share of a batch's sample numbers (sizes differ by at most 1)."""
    return torch.tensor_split(index, rank.world)[rank.rank]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``tensor`` (a new tensor; not differentiable)."""
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of each rank's input is the summed gradient
    (the derivative of ``sum_r f_r`` with respect to every rank's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class _GlobalValue(torch.autograd.Function):
    """Forward: ``value`` (the same on every rank); backward: the gradient goes to ``local``."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def global_losses(losses: torch.Tensor, rows: list[int], rank: Rank
                  ) -> tuple[torch.Tensor, list[bool]]:
    """The task losses ``(T,)`` of the global batch from this rank's local mean losses and row
    counts, and which tasks have rows in the global batch. Local loss ``t`` is weighted by
    ``R · n_t,local / n_t,global`` (so that the mean over ranks is the global mean loss, also
    with unequal shards); the returned tensor has the global value on every rank and sends its
    gradient to that weighted local loss."""
    counts = torch.tensor(rows, dtype=torch.float64)
    total = all_reduce_sum(counts)
    factor = torch.where(total > 0, counts * rank.world / total.clamp(min=1.0),
                         torch.zeros_like(total))
    weighted = losses * factor.to(losses.device, losses.dtype)
    value = all_reduce_sum(weighted) / rank.world
    return _GlobalValue.apply(weighted, value), (total > 0).tolist()


def average(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``tensor`` (e.g. the ``T x D`` task-gradient matrix)."""
    rank = current()
    if rank is None or rank.world == 1:
        return tensor
    return all_reduce_sum(tensor) / rank.world


def average_gradients(params: Iterable[nn.Parameter], rank: Rank) -> None:
    """Average every parameter's ``.grad`` over the ranks, in one flat all-reduce. A parameter
    without a gradient on some rank gets a zero one; without a gradient on every rank it keeps
    ``None`` (the optimiser skips it, as in one process)."""
    params = list(params)
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    has = all_reduce_sum(has).tolist()
    used = [p for p, h in zip(params, has) if h > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    flat /= rank.world
    offset = 0
    for p in used:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))  # type: ignore[union-attr]
        offset += n


def broadcast_parameters(model: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (identical starting points)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


class _SyncBatchNorm:
    """Mixed into a BatchNorm class: in training mode under data parallelism, the batch's mean
    and variance are those of the global batch (two differentiable all-reduces); the running
    statistics are updated from them as BatchNorm does. Otherwise the class's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = current()
        bn: Any = self
        if not bn.training or rank is None or rank.world == 1:
            return super().forward(x)  # type: ignore[misc]
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x32 = x.float()
        count = all_reduce_sum(torch.tensor([x32.numel() / max(x32.shape[1], 1)],
                                            dtype=torch.float64, device=x.device))
        n = float(count.item())
        mean = _AllReduceSum.apply(x32.sum(dims)) / n
        centred = x32 - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                            else bn.momentum)
                unbiased = var * (n / max(n - 1.0, 1.0))
                bn.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                bn.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return y.to(x.dtype)


_SYNC_CLASSES: dict[type, type] = {}


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm layer of ``model`` compute global-batch statistics in training
    (in place: the layers keep their parameters, buffers and state-dict keys)."""
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not issubclass(
                cls, _SyncBatchNorm):
            if cls not in _SYNC_CLASSES:
                _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (_SyncBatchNorm, cls), {})
            module.__class__ = _SYNC_CLASSES[cls]
    return model


def _entry(index: int, world: int, store: str, out: str, fn: Callable[..., Any],
           args: tuple[Any, ...], threads: int, device: str) -> None:
    """One rank: join the process group, run ``fn(*args)``; rank 0 writes its result (or the
    exception it raised) to ``out``."""
    global _CURRENT
    if device.startswith("cuda"):
        local = torch.device(f"cuda:{index % max(torch.cuda.device_count(), 1)}")
        torch.cuda.set_device(local)
        os.environ["BENCH_DEVICE"] = str(local)
        backend = "nccl"
    else:
        os.environ["BENCH_DEVICE"] = "cpu"
        backend = "gloo"
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=index,
                            world_size=world, timeout=timedelta(minutes=30))
    _CURRENT = Rank(index, world)
    try:
        result: Any = fn(*args)
        if index == 0:
            Path(out).write_bytes(pickle.dumps(("ok", result)))
    except BaseException as err:
        if index == 0:
            try:
                Path(out).write_bytes(pickle.dumps(("raised", err)))
            except Exception:  # noqa: BLE001 - an exception that cannot be pickled
                pass
        raise
    finally:
        _CURRENT = None
        dist.destroy_process_group()


#: the module the fork server imports before forking ranks
PRELOAD = "bench.run.preload"


def launch(fn: Callable[..., Any], world: int, args: tuple[Any, ...],
           device: torch.device | None = None, threads: int | None = None) -> Any:
    """Run ``fn(*args)`` on ``world`` spawned processes joined by torch.distributed and return
    rank 0's result; rank 0's exception is raised again here, another rank's as a
    ``RuntimeError`` with its traceback. ``fn`` and ``args`` must be picklable (module-level
    function; the method spec, the data and the setup are). Each rank takes ``threads`` torch
    threads (default: this process's threads shared out)."""
    import multiprocessing

    import torch.multiprocessing as mp

    # a fork server that has loaded the engine and the plugins once (not a fork of this
    # process, whose threads and CUDA state a fork would copy; not a fresh interpreter per rank)
    multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD])
    device = device or torch.device("cpu")
    threads = threads or max(1, torch.get_num_threads() // world)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        store, out = str(Path(tmp) / "store"), Path(tmp) / "result.pkl"
        try:
            mp.start_processes(_entry, args=(world, store, str(out), fn, args, threads,
                                             str(device)),
                               nprocs=world, join=True, start_method="forkserver")
        except mp.ProcessRaisedException as err:
            if out.exists():
                status, value = pickle.loads(out.read_bytes())
                if status == "raised":
                    raise value from None
            raise RuntimeError(f"data-parallel rank {err.error_index} failed: "
                               f"{str(err).strip().splitlines()[-1]}\n{err}") from None
        except mp.ProcessExitedException as err:
            raise RuntimeError(f"data-parallel rank {err.error_index} exited with code "
                               f"{err.exit_code}") from None
        status, value = pickle.loads(out.read_bytes())
        if status == "raised":
            raise value
        return value
