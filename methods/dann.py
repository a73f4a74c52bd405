"""DANN — domain-adversarial training through a gradient-reversal layer (Ganin et al., JMLR 2016).

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand and Lempitsky,
"Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016 — one of MoLA's domain
baselines (Tables 2–3; MoLA's reference list gives Muralidhar et al. 2018 for "DANN", a
different method, but its text and DomainBed's algorithm are Ganin et al.'s).

* Network (DomainBed's ``AbstractDANN``): featurizer (the scenario's encoder + global average
  pooling), **one** classifier for all domains, and a domain discriminator on the features:
  DomainBed's MLP, width 256, depth 3, dropout 0 (``hparams_registry.py``: ``mlp_width``,
  ``mlp_depth``, ``mlp_dropout``), with one output per domain.
* Loss (§3.4, Eq. 9–14 with the gradient-reversal layer R_λ):
  ``Σ_d L_d + T·CE(D(R_λ(f(x))), d)`` — the discriminator minimises the domain cross-entropy, the
  encoder receives ``-λ`` times its gradient (T = domains in the batch, see
  :mod:`bench.models.dg` for the scale).
* λ: DomainBed's ``lambda`` = 1.0 times Ganin et al.'s ramp
  ``2 / (1 + exp(-10 p)) - 1`` over the training progress ``p`` (§5.2.2; γ = 10).

Simplifications: DomainBed alternates discriminator and generator updates
(``d_steps_per_g_step`` = 1) with their own Adam optimisers (β1 = 0.5); here one backward pass
through the reversal layer updates both with the run's optimiser, as Ganin et al.'s Algorithm 1
does. Ganin et al.'s learning-rate annealing is not used (the scenario's schedule applies to
every method). No gradient penalty (DomainBed's default ``grad_penalty`` = 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bench.api import LogUniform, register_architecture, register_method
from bench.models.dg import MLP, DomainInvariantArchitecture, dann_lambda, grad_reverse


class DANN(DomainInvariantArchitecture):
    """Featurizer + classifier + domain discriminator behind a gradient-reversal layer."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, *,
                 adversarial_weight: float = 1.0, gamma: float = 10.0, mlp_width: int = 256,
                 mlp_depth: int = 3, mlp_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.adversarial_weight = float(adversarial_weight)
        self.gamma = float(gamma)
        self.discriminator = MLP(self.feature_dim, len(task_name), mlp_width, mlp_depth,
                                 mlp_dropout)

    def reversal_scale(self) -> float:
        """λ of the current step: ``adversarial_weight`` × Ganin et al.'s ramp."""
        return self.adversarial_weight * dann_lambda(self.progress(), self.gamma)

    def penalty(self, rows: dict[str, torch.Tensor], labels: torch.Tensor | None
                ) -> torch.Tensor:
        reversed_features = grad_reverse(rows["features"], self.reversal_scale())
        return F.cross_entropy(self.discriminator(reversed_features), rows["domains"])


register_architecture(
    "dann", DANN, description="one classifier + a domain discriminator behind gradient reversal",
    defaults={"adversarial_weight": 1.0, "gamma": 10.0, "mlp_width": 256, "mlp_depth": 3,
              "mlp_dropout": 0.0},
    scenarios=("domain",), supports_rep_grad=False,
    search={"adversarial_weight": LogUniform("DomainBed's lambda (DANN): 10^U(-2, 2)", 1e-2,
                                             1e2)})
register_method(
    "dann", architecture="dann", weighting="ew",
    description="DANN: domain-adversarial features through a gradient-reversal layer",
    paper="Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016 (§3.4, "
          "Eq. 9-14); DomainBed's DANN hyper-parameters",
    family="domain_generalisation")
