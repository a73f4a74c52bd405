"""One test per numbered fix of :mod:`bench.models.compat`: the bug exists in raw LibMTL 1.1.5 and
our version works. Tiny tensors only; the two subprocess tests take a few seconds each."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.models import compat
from bench.models.backbones import ResNet
from bench.models.compat import CompatArchitecture, CompatWeighting
from bench.models.method import IncompatibleError, build_model, check_compatible, resolve_method
from bench.registry import REPO_ROOT, weightings
from bench.run.engine import compute_losses, make_optimizer

compat.import_libmtl()  # LibMTL can be imported only after the shim (fix 1)
from LibMTL.architecture.abstract_arch import AbsArchitecture  # noqa: E402
from LibMTL.architecture.Cross_stitch import Cross_stitch  # noqa: E402
from LibMTL.weighting.abstract_weighting import AbsWeighting  # noqa: E402
from LibMTL.weighting.CAGrad import CAGrad as RawCAGrad  # noqa: E402
from LibMTL.weighting.DWA import DWA as RawDWA  # noqa: E402
from LibMTL.weighting.GradVac import GradVac as RawGradVac  # noqa: E402
from LibMTL.weighting.MGDA import MGDA as RawMGDA  # noqa: E402
from LibMTL.weighting.PCGrad import PCGrad as RawPCGrad  # noqa: E402

torch.set_num_threads(1)
PY = sys.executable


def tiny_encoder() -> ResNet:
    return ResNet(in_channels=1, widths=(4, 4, 8, 8), blocks=(1, 1, 1, 1), strides=(1, 2, 1, 2))


class RawHPS(AbsArchitecture):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = self.encoder_class()


class FixedHPS(CompatArchitecture):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = self.encoder_class()


def build(arch: type, weighting: type, tasks: int = 2, rep_grad: bool = False,
          multi_input: bool = False) -> nn.Module:
    names = [f"t{i}" for i in range(tasks)]
    decoders = nn.ModuleDict({t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                               nn.Linear(8, 3)) for t in names})
    mixed = type("M", (arch, weighting), {})
    model = mixed(names, tiny_encoder, decoders, rep_grad, multi_input, torch.device("cpu"))
    model.init_param()
    return model


def losses_of(model: nn.Module, n: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    out = model(x)
    y = torch.randint(0, 3, (n,), generator=gen)
    return torch.stack([nn.functional.cross_entropy(out[t], y) for t in model.task_name])


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def test_fix1_import_shim() -> None:
    raw = run_python("import LibMTL")
    assert raw.returncode != 0 and "torchvision.models.utils" in raw.stderr
    fixed = run_python("from bench.models.compat import import_libmtl; import_libmtl(); "
                       "import LibMTL.weighting; print('ok')")
    assert fixed.returncode == 0 and fixed.stdout.strip() == "ok", fixed.stderr


def test_fix2_scipy_is_needed_and_declared() -> None:
    source = inspect.getsource(sys.modules[RawCAGrad.__module__])
    assert "from scipy" in source
    text = (REPO_ROOT / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = ["):]
    deps = deps[: deps.index("]")]  # the project's (runtime) dependency list
    assert re.search(r'^\s*"scipy[<>=~ "]', deps, re.M)


def test_fix3_gradient_surgery_on_torch2() -> None:
    torch.manual_seed(0)
    raw = build(RawHPS, RawPCGrad)
    with pytest.raises(AttributeError, match="NoneType"):
        raw.backward(losses_of(raw))

    class FixedPCGrad(CompatWeighting, RawPCGrad):
        backward = RawPCGrad.backward

    torch.manual_seed(0)
    fixed = build(FixedHPS, FixedPCGrad)
    fixed.backward(losses_of(fixed))
    grads = [p.grad for p in fixed.get_share_params()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("tasks", [2, 4])
def test_fix4_cagrad_any_task_count(tasks: int) -> None:
    raw = build(FixedHPS, type("RawCA", (CompatWeighting, RawCAGrad),
                               {"backward": RawCAGrad.backward}), tasks=tasks)
    with pytest.raises(ValueError, match="reshape"):
        raw.backward(losses_of(raw), calpha=0.5, rescale=1)
    fixed_cls = weightings.get("cagrad").cls
    fixed = build(FixedHPS, fixed_cls, tasks=tasks)
    w = fixed.backward(losses_of(fixed), calpha=0.5, rescale=1)
    assert w.shape == (tasks,) and abs(w.sum() - 1) < 1e-6 and (w >= -1e-9).all()


def test_fix4_cagrad_matches_libmtl_on_three_tasks() -> None:
    torch.manual_seed(0)
    raw = build(FixedHPS, type("RawCA", (CompatWeighting, RawCAGrad),
                               {"backward": RawCAGrad.backward}), tasks=3)
    state = {k: v.clone() for k, v in raw.state_dict().items()}
    raw.backward(losses_of(raw), calpha=0.5, rescale=1)
    g_raw = torch.cat([p.grad.reshape(-1) for p in raw.get_share_params()])
    fixed = build(FixedHPS, weightings.get("cagrad").cls, tasks=3)
    fixed.load_state_dict(state)
    fixed.backward(losses_of(fixed), calpha=0.5, rescale=1)
    g_fix = torch.cat([p.grad.reshape(-1) for p in fixed.get_share_params()])
    cos = torch.nn.functional.cosine_similarity(g_raw, g_fix, dim=0)
    assert cos > 0.999 and torch.allclose(g_raw.norm(), g_fix.norm(), rtol=1e-2)


def test_fix5_explicit_defaults_and_modes(tiny_scenario) -> None:
    raw = build(FixedHPS, type("RawGV", (CompatWeighting, RawGradVac),
                               {"backward": RawGradVac.backward}))
    raw.init_param()
    with pytest.raises(KeyError, match="beta"):
        raw.backward(losses_of(raw))
    raw_mgda = build(FixedHPS, type("RawM", (CompatWeighting, RawMGDA),
                                    {"backward": RawMGDA.backward}))
    with pytest.raises(KeyError, match="mgda_gn"):
        raw_mgda.backward(losses_of(raw_mgda))
    assert weightings.get("mgda").defaults == {"mgda_gn": "none"}
    assert weightings.get("cagrad").defaults == {"calpha": 0.5, "rescale": 1}
    # an unsupported rep_grad mode is refused at planning time
    spec = replace(resolve_method("pcgrad"), rep_grad=True)
    with pytest.raises(IncompatibleError, match="rep_grad=True"):
        check_compatible(spec, tiny_scenario("single_input")[0])


def test_fix6_cross_stitch_on_a_staged_encoder(tiny_scenario) -> None:
    names = ["a", "b"]
    decoders = nn.ModuleDict({t: nn.Linear(8, 3) for t in names})
    with pytest.raises(AttributeError, match="conv1"):
        Cross_stitch(names, tiny_encoder, decoders, False, False, torch.device("cpu"))
    scenario, data = tiny_scenario("single_input")
    model = build_model(resolve_method("cross_stitch"), data)
    out = model(data.train.inputs[:4])
    assert set(out) == set(data.task_names)
    alphas = list(model.encoder.alpha)
    assert len(alphas) == 4 and alphas[0].shape == (3, 3)
    assert torch.allclose(alphas[0].diagonal(), torch.full((3,), 0.9))
    assert torch.allclose(alphas[0][0, 1:], torch.full((2,), 0.05))


def test_fix7_backward_is_not_a_property() -> None:
    assert isinstance(AbsWeighting.__dict__["backward"], property)

    class Forgetful(AbsWeighting):
        pass

    with pytest.raises(TypeError):  # reading the attribute calls it with no arguments
        _ = Forgetful().backward
    assert inspect.isfunction(CompatWeighting.__dict__["backward"])

    class Forgetful2(CompatWeighting):
        pass

    with pytest.raises(NotImplementedError, match="Forgetful2"):
        Forgetful2().backward(torch.zeros(2))


def test_fix8_fused_multi_input_forward(tiny_scenario) -> None:
    trainer_src = inspect.getsource(sys.modules["LibMTL.trainer"]) if "LibMTL.trainer" in \
        sys.modules else (Path(sys.modules["LibMTL"].__file__).parent / "trainer.py").read_text()
    assert "self.model(train_input, task)" in trainer_src  # LibMTL: one forward per task
    _, data = tiny_scenario("multi_input")
    model = build_model(resolve_method("hps"), data)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    index = {t: torch.arange(4) for t in data.task_names}
    losses, _ = compute_losses(model, data, data.train, index, fused=True)
    assert len(calls) == 1 and losses.shape == (2,)
    calls.clear()
    losses_pt, _ = compute_losses(model, data, data.train, index, fused=False)
    assert len(calls) == 2
    model.eval()  # BatchNorm batch statistics differ between the two passes in train mode
    fused, _ = compute_losses(model, data, data.train, index, fused=True)
    per_task, _ = compute_losses(model, data, data.train, index, fused=False)
    assert torch.allclose(fused, per_task, atol=1e-5)


def test_fix9_same_rep_condition() -> None:
    raw = build(RawHPS, CompatWeighting, rep_grad=True)
    raw(torch.randn(4, 1, 8, 8))
    assert isinstance(raw.rep, dict)  # LibMTL: one shared tensor stored as if per task
    fixed = build(FixedHPS, CompatWeighting, rep_grad=True)
    fixed(torch.randn(4, 1, 8, 8))
    assert isinstance(fixed.rep, torch.Tensor)
    multi = build(FixedHPS, CompatWeighting, rep_grad=True, multi_input=True)
    multi(torch.randn(4, 1, 8, 8), task_name="t0")
    assert isinstance(multi.rep, dict) and set(multi.rep) == {"t0"}


# gradients whose Gram matrix overflows float32: LibMTL's solver never reaches its stop criterion
NON_CONVERGING = [[1.0, 0.0], [0.0, 1.0], [1e20, 1e20]]


def test_fix10_mgda_solver_terminates() -> None:
    source = inspect.getsource(RawMGDA._find_min_norm_element)
    assert "while iter_count < MAX_ITER" in source and "iter_count +=" not in source
    code = f"""
        import torch
        from bench.models.compat import import_libmtl
        import_libmtl()
        from LibMTL.weighting.MGDA import MGDA
        print("ready", flush=True)
        print(MGDA()._find_min_norm_element(torch.tensor({NON_CONVERGING})), flush=True)
    """
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(2.0)
        assert proc.poll() is None, "LibMTL's MGDA solver returned: the bug is gone"
    finally:
        proc.kill()
        proc.wait()
    solve = sys.modules[weightings.get("mgda").cls.__module__].min_norm_weights
    g = np.array(NON_CONVERGING)
    alpha, iters, converged = solve(g @ g.T)
    assert alpha is not None and abs(alpha.sum() - 1) < 1e-9 and converged
    assert np.allclose(alpha, [0.5, 0.5, 0.0], atol=1e-6)
    # not converged within the budget: the last iterate, a point of the simplex, not None
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 3))
    alpha, iters, converged = solve(m @ m.T, max_iter=1)
    assert not converged and iters == 1 and abs(alpha.sum() - 1) < 1e-9 and (alpha >= 0).all()


def test_fix11_grad2vec_on_the_parameters_device() -> None:
    def harness(base: type) -> nn.Module:
        class H(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                nn.Module.__init__(self)
                self.p = nn.Parameter(torch.zeros(3, device="meta"))
                self.p.grad = torch.ones(3, device="meta")

            def get_share_params(self):
                return [self.p]

        h = H()
        h._compute_grad_dim()
        return h

    with pytest.raises(NotImplementedError, match="meta"):  # CPU buffer, data on another device
        harness(AbsWeighting)._grad2vec()
    assert harness(CompatWeighting)._grad2vec().device.type == "meta"


def test_every_fix_has_a_test() -> None:
    numbers = {int(m.group(1)) for m in re.finditer(r"^(\d+)\. ", compat.__doc__ or "", re.M)}
    tested = {int(name.split("_")[1][3:]) for name in globals() if name.startswith("test_fix")}
    assert numbers == tested == set(range(1, 13))


def test_fix12_epoch_and_loss_buffer(tiny_scenario) -> None:
    raw = build(FixedHPS, type("RawD", (CompatWeighting, RawDWA), {"backward": RawDWA.backward}))
    with pytest.raises(AttributeError, match="epoch"):  # LibMTL's Trainer would have set it
        raw.backward(losses_of(raw), T=2.0)
    _, data = tiny_scenario("single_input")
    spec = resolve_method("dwa")
    model = build_model(spec, data)
    optimizer = make_optimizer(model.parameters(), data.training)
    recorded, weights = [], []
    for _epoch in range(3):  # the engine's calls: train() ... steps ... eval() (evaluation)
        model.train()
        epoch_losses = []
        for step in range(2):
            index = {t: torch.arange(step * 8, step * 8 + 8) for t in data.task_names}
            losses, _ = compute_losses(model, data, data.train, index, fused=False)
            epoch_losses.append(losses.detach().double().numpy())
            optimizer.zero_grad(set_to_none=False)
            weights.append(model.backward(losses, T=2.0))
            optimizer.step()
        recorded.append(np.mean(epoch_losses, axis=0))
        model.eval()
    assert model.epoch == 2
    assert np.allclose(model.train_loss_buffer[:, :2], np.stack(recorded[:2], axis=1))
    assert all(np.allclose(w, 1.0) for w in weights[:4])  # equal weights in epochs 0 and 1
    rate = recorded[1] / recorded[0]
    expected = 3 * np.exp(rate / 2) / np.exp(rate / 2).sum()
    assert np.allclose(weights[4], expected, rtol=1e-5) and not np.allclose(expected, 1.0)


@pytest.mark.parametrize("name", sorted(weightings.list()))
def test_registered_weightings_resolve_to_the_fixed_methods(name: str) -> None:
    """Fixes 3, 7, 11 hold for every registered weighting: the MRO picks CompatWeighting's
    ``_reset_grad``/``_grad2vec`` (not AbsWeighting's) and ``backward`` is a plain method."""
    cls = weightings.get(name).cls
    assert issubclass(cls, CompatWeighting)
    assert cls._reset_grad is CompatWeighting._reset_grad
    assert cls._grad2vec is CompatWeighting._grad2vec
    assert inspect.isfunction(inspect.getattr_static(cls, "backward"))
    assert cls.backward is not CompatWeighting.backward  # implemented
