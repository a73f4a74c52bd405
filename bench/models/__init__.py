"""Stage 2 — models: what is trained.

* :mod:`~bench.models.compat` — LibMTL 1.1.5 on torch 2 (``AbsWeighting`` / ``AbsArchitecture``
  with every fix, numbered and tested), the weighting and architecture specs.
* :mod:`~bench.models.method` — a method = architecture × weighting + defaults
  (:class:`MethodSpec`), its registration, compatibility checks and :func:`build_model`.
* :mod:`~bench.models.backbones` — encoders (narrow ResNet, ResNet-18, timm weights).
* :mod:`~bench.models.heads` — task decoders.
* :mod:`~bench.models.mola`, :mod:`~bench.models.mtlora` — the MoLA and MTLoRA layers.

The method plugins themselves are one file each in the repository's ``methods/`` folder.

May import: :mod:`bench.data`, :mod:`bench.registry` and this package — never ``bench.run``,
``bench.records`` or ``bench.report`` (``tests/test_layout.py`` checks it).
"""
