"""``officehome`` — Office-Home, domain heterogeneity: four renderings of one 65-class problem.

Dataset: Office-Home (Venkateswara et al., "Deep hashing network for unsupervised domain
adaptation", CVPR 2017): 15,588 images of 65 office and home objects in four domains — Art (A),
Clipart (C), Product (P), Real World (R). Layout as DomainBed's download script leaves it:
``<data_root>/office_home/{Art,Clipart,Product,Real World}/<class>/<image>`` (the official
``OfficeHomeDataset_10072016`` folder renamed; https://www.hemanthdv.org/officeHomeDataset.html).

Tasks: one per domain, in MoLA (ICML 2024) Table 3's column order P, A, C, R; one shared label
space. Splits, image handling: :class:`bench.data.real.DomainBedScenario` (seeded 80/10/10 % per
domain, data seed 2017).

Profiles: ``paper`` — MoLA App. B: ResNet-18, batches of 128 drawn from all domains pooled, AdamW lr
1e-4; from MoLA's reference code (the paper does not state them): ImageNet weights, weight decay
1e-4, cosine schedule, 60 epochs, its augmentation at 224²
(:data:`bench.data.transforms.DOMAINBED_CLIP`). ``smoke`` — 32×32, at most 6 images per class and
domain, a narrow ResNet, 1 epoch.
"""

from __future__ import annotations

from bench.api import register_scenario
from bench.data.real import DomainBedScenario


@register_scenario("officehome")
class OfficeHome(DomainBedScenario):
    """Office-Home (DomainBed layout), 4 domains × 65 classes, each domain a task; real data."""

    name = "officehome"
    heterogeneity = "domain"  # as DomainBedScenario (stated: `list scenarios` reads it)
    description = ("Office-Home (DomainBed layout), 4 domains x 65 classes, each domain a task; "
                   "real data")
    folder = "office_home"
    num_classes = 65
    data_seed = 2017
    paper_epochs = 60
    domains = (
        ("P", "Domain-P", ("Product",)),
        ("A", "Domain-A", ("Art",)),
        ("C", "Domain-C", ("Clipart",)),
        ("R", "Domain-R", ("Real World", "Real_World", "RealWorld", "Real")),
    )
    source = "Office-Home as downloaded by DomainBed"
    layout = "office_home/{Art,Clipart,Product,Real World}/<class>/<image> (65 classes)"
    where = ("https://www.hemanthdv.org/officeHomeDataset.html or DomainBed's download script "
             "(domainbed/scripts/download.py)")
    #: images per domain (Venkateswara et al. 2017; 15,588 in all), for estimates before a
    #: download
    published_sizes = {"P": 4439, "A": 2427, "C": 4365, "R": 4357}
