"""Samples read on demand (bench.data.streaming): tensor-like indexing, errors, background
prefetching, and training on streamed splits that matches training on the same data in memory.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_real_datasets import WRITERS

from bench.data import real as bdata
from bench.data.scenario import DataMissingError, ScenarioData, Split
from bench.data.streaming import (
    THREADS_ENV,
    LazySamples,
    is_lazy,
    loader_threads,
    prefetched,
    take,
)
from bench.models.method import resolve_method
from bench.registry import scenarios
from bench.run.engine import train


def _lazy(tensor: torch.Tensor, name: str = "t") -> LazySamples:
    return LazySamples.per_sample(lambda i, key: tensor[i].clone(), len(tensor), tensor.shape[1:],
                                  name)


def _streamed(split: Split) -> Split:
    inputs = ({k: _lazy(v) for k, v in split.inputs.items()} if isinstance(split.inputs, dict)
              else _lazy(split.inputs))
    return Split(inputs, {k: _lazy(v) for k, v in split.targets.items()})


# ------------------------------------------------------------------ indexing
def test_indexing_matches_a_tensor() -> None:
    full = torch.arange(7 * 2 * 3, dtype=torch.float32).reshape(7, 2, 3)
    lazy = _lazy(full)
    assert lazy.shape == full.shape and len(lazy) == 7 and is_lazy(lazy)
    for index in (torch.tensor([3, 0, 6, 3]), slice(1, 5), slice(None, None, 2), slice(5, 20),
                  [2, -1], np.array([4, 1])):
        assert torch.equal(lazy[index], full[index]), index
    assert torch.equal(lazy[-2], full[-2])
    sub = lazy.subset(torch.tensor([5, 2, 0]))
    assert sub.shape == (3, 2, 3) and torch.equal(sub[torch.tensor([2, 0])], full[[0, 5]])
    assert torch.equal(sub.subset(slice(1, None))[:], full[[2, 0]])


def test_from_array_converts_only_the_rows_taken() -> None:
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2)
    taken: list[int] = []

    def convert(rows: np.ndarray, keys) -> torch.Tensor:
        taken.append(len(rows))
        return torch.from_numpy(rows).float().unsqueeze(1) / 255.0

    lazy = LazySamples.from_array(images, convert, (1, 2, 2))
    batch = lazy[torch.tensor([4, 1])]
    assert taken == [2]
    assert torch.equal(batch, torch.from_numpy(images[[4, 1]]).float().unsqueeze(1) / 255.0)


def test_bad_indices_and_bad_samples_are_clear_errors() -> None:
    lazy = _lazy(torch.zeros(4, 2))
    with pytest.raises(IndexError, match="out of range for 4 samples"):
        lazy[torch.tensor([0, 4])]
    with pytest.raises(TypeError, match="boolean masks"):
        lazy[torch.tensor([True, False, True, False])]
    wrong = LazySamples.per_sample(lambda i, key: torch.zeros(3), 4, (2,), "vlcs/train")
    with pytest.raises(DataMissingError, match=r"vlcs/train: sample 1 has shape \(3,\), "
                                               r"expected \(2,\)"):
        wrong[[1]]


def test_loader_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")
    assert loader_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ValueError, match="BENCH_LOADER_THREADS must be a positive integer"):
        loader_threads()
    monkeypatch.delenv(THREADS_ENV)
    assert 1 <= loader_threads() <= 8


# ------------------------------------------------------------------ prefetching
def test_prefetched_keeps_order_and_works_ahead() -> None:
    started = [threading.Event() for _ in range(4)]
    drawn: list[int] = []

    def fetches():
        for k in range(4):
            drawn.append(k)  # drawn in the caller's thread, in order

            def fetch(k: int = k) -> int:
                started[k].set()
                return k * 10
            yield fetch

    seen = []
    for k, value in enumerate(prefetched(fetches(), background=True)):
        seen.append(value)
        if k + 1 < 4:  # the next fetch runs while this item is in use
            assert started[k + 1].wait(timeout=10), f"fetch {k + 1} did not start ahead"
    assert seen == [0, 10, 20, 30] and drawn == [0, 1, 2, 3]
    assert list(prefetched((lambda k=k: k for k in range(3)), background=False)) == [0, 1, 2]


def test_prefetched_raises_the_fetch_error() -> None:
    def boom() -> int:
        raise DataMissingError("cannot read image x.jpg")

    with pytest.raises(DataMissingError, match="x.jpg"):
        list(prefetched([lambda: 1, boom, lambda: 3], background=True))


# ------------------------------------------------------------------ training on streamed data
@pytest.mark.parametrize("kind", ["domain", "multi_input", "single_input"])
@pytest.mark.parametrize("method", ["hps", "pcgrad"])
def test_training_on_streamed_splits_equals_training_in_memory(tiny_scenario, kind: str,
                                                               method: str) -> None:
    scen, data = tiny_scenario(kind)
    streamed = replace(data, train=_streamed(data.train), val=_streamed(data.val),
                       test=_streamed(data.test))
    spec = resolve_method(method)
    in_memory = train(spec, scen, data, data.training, seed=3)
    from_disk = train(spec, scen, streamed, data.training, seed=3)
    assert from_disk.test_metrics == in_memory.test_metrics
    assert from_disk.history == in_memory.history


@pytest.mark.parametrize("name", ["vlcs", "radimagenet", "nyuv2", "pascal_context",
                                  "medmnist_mola"])
def test_real_loader_streams_augmented_training_batches_deterministically(
        tmp_path: Path, name: str, monkeypatch) -> None:
    """The real loaders hand the engine streamed samples: keyed (training) reads are augmented
    and repeatable, unkeyed reads are the evaluation transform, and a run is deterministic
    whatever thread decodes what."""
    monkeypatch.setenv(bdata.VERIFY_ENV, "0")
    WRITERS[name](tmp_path)
    scen = scenarios.get(name)()
    data: ScenarioData = scen.load("smoke", tmp_path)
    task = data.task_names[0]
    inputs = data.train.inputs[task] if isinstance(data.train.inputs, dict) else \
        data.train.inputs
    assert is_lazy(inputs)
    idx = torch.arange(min(6, len(inputs)))
    keys = [(0, 1, 0, j) for j in range(len(idx))]
    augmented = take(inputs, idx, keys)
    assert torch.equal(augmented, take(inputs, idx, keys))  # the same keys, the same batch
    assert not torch.equal(augmented, inputs[idx])  # training is augmented...
    assert torch.equal(take(inputs, idx), inputs[idx])  # ...evaluation is not
    spec = resolve_method("hps")
    first = train(spec, scen, data, data.training, seed=0)
    second = train(spec, scen, data, data.training, seed=0)
    assert first.test_metrics == second.test_metrics and first.history == second.history


def test_an_unreadable_image_fails_the_run_naming_the_file(tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setenv(bdata.VERIFY_ENV, "0")
    WRITERS["vlcs"](tmp_path)
    scen = scenarios.get("vlcs")()
    data = scen.load("smoke", tmp_path)  # lists the files; reads none
    broken = sorted((tmp_path / "VLCS").rglob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataMissingError, match=f"cannot read image {broken}") as err:
        train(resolve_method("hps"), scen, data, data.training, seed=0)
    assert "\n" not in str(err.value)
