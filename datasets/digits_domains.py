"""Embedded domain-heterogeneity scenario (draft; calibrated later)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bench.api import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario


@register_scenario("digits_domains")
class DigitsDomains(Scenario):
    """Handwritten digits in 3 style-shifted domains; each domain a task (draft)."""

    heterogeneity = "domain"
    source = "scikit-learn load_digits (ships with the wheel)"

    def setup(self, profile: str) -> TrainingSetup:
        return TrainingSetup(epochs=2 if profile == "smoke" else 20, batch_size=32)

    def load(self, profile, data_root=None) -> ScenarioData:
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        y = torch.tensor(d.target)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x), generator=g)
        doms = {"clean": lambda a: a, "rot": lambda a: a.rot90(1, (2, 3)), "inv": lambda a: 1 - a}
        n = 100 if profile == "smoke" else 300
        splits = {"train": {}, "val": {}, "test": {}}
        for i, (name, fn) in enumerate(doms.items()):
            idx = perm[i * 500:(i + 1) * 500]
            xi, yi = fn(x[idx]), y[idx]
            splits["train"][name] = (xi[:n], yi[:n])
            splits["val"][name] = (xi[300:400], yi[300:400])
            splits["test"][name] = (xi[400:500], yi[400:500])
        mk = lambda s: Split({k: v[0] for k, v in splits[s].items()},  # noqa: E731
                             {k: v[1] for k, v in splits[s].items()})
        tasks = tuple(TaskSpec(name, "classification", 10, ("accuracy",)) for name in doms)
        return ScenarioData("digits_domains", "domain", tasks, (1, 16, 16), mk("train"),
                            mk("val"), mk("test"), self.setup(profile),
                            backbone_kwargs={"widths": (16, 32, 64, 64)},
                            shared_label_space=True)
