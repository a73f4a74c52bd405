"""``vlcs`` — VLCS, domain heterogeneity: four photo collections of one 5-class problem.

Dataset: VLCS (Fang, Xu & Rockmore, ICCV 2013; "Unbiased look at dataset bias", Torralba &
Efros, CVPR 2011): 10,729 images of 5 classes (bird, car, chair, dog, person) from Caltech101
(C), LabelMe (L), SUN09 (S) and VOC2007 (V). Layout as DomainBed's download script leaves it:
``<data_root>/VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image>`` (DomainBed,
``python -m domainbed.scripts.download``; the archive is linked from its README).

Tasks: one per domain, in MoLA (ICML 2024) Table 2's column order V, L, C, S; one shared label
space (Uniform uses one head). Splits, image handling: :class:`bench.data.real.DomainBedScenario`
(seeded 80/10/10 % per domain, data seed 2024).

Profiles: ``paper`` — MoLA App. B: ResNet-18, batches of 128 drawn from all domains pooled, AdamW lr
1e-4; from MoLA's reference code (the paper does not state them): ImageNet weights, weight decay
1e-4, cosine schedule, 10 epochs, its augmentation at 224²
(:data:`bench.data.transforms.DOMAINBED_CLIP`). ``smoke`` — 32×32, at most 6 images per class and
domain, a narrow ResNet, 1 epoch.
"""

from __future__ import annotations

from bench.api import register_scenario
from bench.data.real import DomainBedScenario


@register_scenario("vlcs")
class VLCS(DomainBedScenario):
    """VLCS (DomainBed layout), 4 domains × 5 classes, each domain a task; real data."""

    name = "vlcs"
    heterogeneity = "domain"  # as DomainBedScenario (stated: `list scenarios` reads it)
    description = "VLCS (DomainBed layout), 4 domains x 5 classes, each domain a task; real data"
    folder = "VLCS"
    num_classes = 5
    data_seed = 2024
    paper_epochs = 10
    domains = (
        ("V", "Domain-V", ("VOC2007", "VOC")),
        ("L", "Domain-L", ("LabelMe",)),
        ("C", "Domain-C", ("Caltech101", "Caltech")),
        ("S", "Domain-S", ("SUN09", "SUN")),
    )
    source = "VLCS as downloaded by DomainBed"
    layout = "VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image> (5 classes)"
    where = ("DomainBed's download script (github.com/facebookresearch/DomainBed, "
             "domainbed/scripts/download.py)")
    #: images per domain (DomainBed's VLCS; 10,729 in all), for estimates before a download
    published_sizes = {"V": 3376, "L": 2656, "C": 1415, "S": 3282}
