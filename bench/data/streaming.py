"""Samples read on demand: inputs and targets indexed like tensors, decoded per batch.

The papers' datasets do not fit in memory as float tensors at their resolutions (VLCS and
Office-Home at 224², RadImageNet's 1.35 M images, PASCAL-Context at 448²). A real-dataset
scenario therefore gives the engine :class:`LazySamples` instead of tensors: ``x[index]``
(a ``LongTensor`` of sample numbers, a slice or an int) reads and decodes only those samples,
in a thread pool shared by the process (image decoding and resizing release the GIL), and
returns a stacked tensor exactly as indexing a tensor would. The engine overlaps that reading
with training by fetching the next batch in the background (:func:`prefetched`); the batch
order stays the seeded order of an in-memory run.

* ``BENCH_LOADER_THREADS`` sets the decoding threads per process (default: the number of
  cores, at most 8).
* A sample that cannot be read raises :class:`~bench.data.scenario.DataMissingError` naming it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

from bench.data.scenario import DataMissingError

THREADS_ENV = "BENCH_LOADER_THREADS"
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def loader_threads() -> int:
    """Decoding threads per process: ``$BENCH_LOADER_THREADS``, else min(cores, 8)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return threads
    return max(1, min(os.cpu_count() or 1, 8))


def _decoder_pool() -> ThreadPoolExecutor:
    """The process's decoding pool (a new one after a fork: threads do not survive it)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(loader_threads(), thread_name_prefix="bench-decode")
            _pool_pid = os.getpid()
        return _pool


@contextmanager
def use_loader_threads(threads: int) -> Iterator[None]:
    """Decode with ``threads`` threads inside the block (benchmarks compare thread counts)."""
    global _pool, _pool_pid
    with _pool_lock:
        saved, saved_pid = _pool, _pool_pid
        _pool, _pool_pid = ThreadPoolExecutor(threads, thread_name_prefix="bench-decode"), \
            os.getpid()
    try:
        yield
    finally:
        with _pool_lock:
            temporary, _pool, _pool_pid = _pool, saved, saved_pid
        temporary.shutdown(wait=True)


def _positions(index: Any, n: int) -> list[int]:
    """Sample numbers selected by ``index`` (tensor, array, list, slice), as tensors select."""
    if isinstance(index, slice):
        return list(range(n))[index]
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.bool:
            raise TypeError("boolean masks are not supported; index with sample numbers")
        index = index.reshape(-1).tolist()
    elif isinstance(index, np.ndarray):
        index = index.reshape(-1).tolist()
    out = []
    for i in index:
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} samples")
        out.append(i % n)
    return out


Key = tuple[int, ...]
Keys = Sequence[Key] | None


class LazySamples:
    """``n`` samples of shape ``sample_shape``, read only when indexed.

    ``read_batch(positions, keys)`` returns the stacked samples at ``positions`` (ints in
    ``range(n)``); ``keys`` is None (evaluation) or one augmentation key per position (training:
    :mod:`bench.data.transforms` draws the sample's random transform from it). Build one with
    :meth:`per_sample` (a file per sample, read in the decoding pool) or :meth:`from_array` (an
    in-memory array converted batch by batch). ``x[index]`` behaves like indexing a tensor of
    shape ``(n, *sample_shape)``; :meth:`take` with keys gives the training view;
    :meth:`subset` selects samples without reading them.
    """

    def __init__(self, read_batch: Callable[[list[int], Keys], torch.Tensor], n: int,
                 sample_shape: Sequence[int], name: str = "samples") -> None:
        self._read_batch = read_batch
        self._n = int(n)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.name = name

    @classmethod
    def per_sample(cls, read_one: Callable[[int, Key | None], torch.Tensor], n: int,
                   sample_shape: Sequence[int], name: str = "samples") -> LazySamples:
        """Samples read one by one by ``read_one(i, key)`` in the process's decoding pool."""
        shape = tuple(int(s) for s in sample_shape)

        def read_batch(positions: list[int], keys: Keys) -> torch.Tensor:
            if not positions:
                raise IndexError(f"{name}: an empty selection")
            samples = list(_decoder_pool().map(
                read_one, positions, keys if keys is not None else [None] * len(positions)))
            for i, sample in zip(positions, samples):
                if tuple(sample.shape) != shape:
                    raise DataMissingError(f"{name}: sample {i} has shape {tuple(sample.shape)}"
                                           f", expected {shape}")
            return torch.stack(samples)

        return cls(read_batch, n, shape, name)

    @classmethod
    def from_array(cls, array: np.ndarray,
                   convert: Callable[[np.ndarray, Keys], torch.Tensor],
                   sample_shape: Sequence[int], name: str = "samples") -> LazySamples:
        """Rows of ``array`` converted by ``convert(rows, keys)`` (vectorised) when taken."""
        return cls(lambda positions, keys: convert(array[positions], keys), len(array),
                   sample_shape, name)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._n, *self.sample_shape))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self._read_batch(_positions([index], self._n), None)[0]
        return self._read_batch(_positions(index, self._n), None)

    def take(self, index: Any, keys: Keys = None) -> torch.Tensor:
        """The samples at ``index``, each transformed with its augmentation key (``keys`` in
        the order of ``index``; None: the evaluation transform, as ``x[index]``)."""
        positions = _positions(index, self._n)
        if keys is not None and len(keys) != len(positions):
            raise ValueError(f"{self.name}: {len(keys)} keys for {len(positions)} samples")
        return self._read_batch(positions, keys)

    def subset(self, index: Any) -> LazySamples:
        """The samples at ``index`` (a tensor, list or slice), still unread."""
        chosen = _positions(index, self._n)
        return LazySamples(lambda positions, keys: self._read_batch(
            [chosen[p] for p in positions], keys), len(chosen), self.sample_shape, self.name)

    def __repr__(self) -> str:
        return f"LazySamples({self.name}, shape={tuple(self.shape)})"


def take(samples: Any, index: Any, keys: Keys = None) -> torch.Tensor:
    """``samples[index]`` for a tensor; the keyed (training) view for :class:`LazySamples`."""
    return samples.take(index, keys) if isinstance(samples, LazySamples) else samples[index]


def is_lazy(value: Any) -> bool:
    """Whether ``value`` (a tensor, a LazySamples or a dict of them) reads samples on demand."""
    if isinstance(value, dict):
        return any(is_lazy(v) for v in value.values())
    return isinstance(value, LazySamples)


def prefetched(fetches: Iterable[Callable[[], T]], background: bool) -> Iterator[T]:
    """The results of ``fetches`` in order; with ``background``, the next one is computed in
    a thread while the caller uses the current one. ``fetches`` itself is advanced in the
    caller's thread, so any random state it draws from is consumed in the same order."""
    if not background:
        for fetch in fetches:
            yield fetch()
        return
    with ThreadPoolExecutor(1, thread_name_prefix="bench-prefetch") as ahead:
        pending: Future[T] | None = None
        for fetch in fetches:
            upcoming = ahead.submit(fetch)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()
