"""Method families: the row groups of the tables and the colours of the figures.

A record names its method's family (``record["family"]``, written from the method's
registration: ``register_method(..., family=...)``, outside the hashed config). Records written
before families existed do not; :func:`family_of` then looks the method up in
:data:`KNOWN_FAMILIES`, and a method it does not know is ``other``. The keys and labels are
those of :data:`bench.models.method.FAMILIES` (a test keeps them equal; the report does not
import the training code).
"""

from __future__ import annotations

from typing import Any

#: family key -> label, in the order tables group rows
LABELS: dict[str, str] = {
    "baseline": "Baselines",
    "loss_weighting": "Loss weightings",
    "gradient": "Gradient methods",
    "architecture": "Architectures",
    "low_rank": "Low-rank / PEFT",
    "domain_generalisation": "Domain generalisation",
}
OTHER = "other"

#: the built-in methods' families, for records that do not name theirs
KNOWN_FAMILIES: dict[str, str] = {
    "hps": "baseline", "single_task": "baseline", "uniform": "baseline",
    "db_mtl": "loss_weighting", "dwa": "loss_weighting", "famo": "loss_weighting",
    "gls": "loss_weighting", "imtl_l": "loss_weighting", "linear_scalarization": "loss_weighting",
    "rlw": "loss_weighting", "si": "loss_weighting", "stch": "loss_weighting",
    "uw": "loss_weighting",
    "aligned_mtl": "gradient", "aligned_mtl_ub": "gradient", "cagrad": "gradient",
    "config": "gradient", "dualproj": "gradient", "excess_mtl": "gradient", "fairgrad": "gradient",
    "graddrop": "gradient", "gradnorm": "gradient", "gradvac": "gradient", "imtl": "gradient",
    "mgda": "gradient", "mgda_ub": "gradient", "moco": "gradient", "nash_mtl": "gradient",
    "pcgrad": "gradient", "sdmgrad": "gradient", "upgrad": "gradient",
    "cgc": "architecture", "cross_stitch": "architecture", "dselect_k": "architecture",
    "ltb": "architecture", "mmoe": "architecture", "mtan": "architecture", "ple": "architecture",
    "adapter": "low_rank", "bitfit": "low_rank", "decoders_only": "low_rank",
    "full_finetune": "low_rank", "lora_shared": "low_rank", "lora_single_task": "low_rank",
    "mola_grad": "low_rank", "mola_router": "low_rank", "mtlora": "low_rank",
    "mtlora_plus": "low_rank", "vpt_deep": "low_rank",
    "coral": "domain_generalisation", "dann": "domain_generalisation",
    "eqrm": "domain_generalisation", "groupdro": "domain_generalisation",
    "mmd_aae": "domain_generalisation", "selfreg": "domain_generalisation",
    "vrex": "domain_generalisation",
}

#: one fixed colour per family (matplotlib's tab10), the same in every figure
COLORS: dict[str, str] = {
    "baseline": "#7f7f7f",
    "loss_weighting": "#1f77b4",
    "gradient": "#ff7f0e",
    "architecture": "#2ca02c",
    "low_rank": "#d62728",
    "domain_generalisation": "#8c564b",
    OTHER: "#9467bd",
}


def family_of(record: dict[str, Any]) -> str:
    """The record's family, else the known family of its method (``A+B``: that of ``A``, or
    of ``B`` when ``A`` is a baseline), else ``other``."""
    if record.get("family"):
        return str(record["family"])
    method = record["method"]
    if "+" in method:
        left, _, right = method.partition("+")
        family = KNOWN_FAMILIES.get(left, OTHER)
        return KNOWN_FAMILIES.get(right, family) if family == "baseline" else family
    return KNOWN_FAMILIES.get(method, OTHER)


def label(family: str) -> str:
    return LABELS.get(family, "Other" if family == OTHER else family)


def order(family: str) -> tuple[int, str]:
    """Sort key: the known families in :data:`LABELS` order, then any other by name."""
    keys = list(LABELS)
    return (keys.index(family), "") if family in keys else (len(keys), family)


def color(family: str) -> str:
    return COLORS.get(family, COLORS[OTHER])
