"""The built-in scenarios: one file per scenario (embedded digits, and the papers' real datasets).

Add a scenario by dropping a file here (README, "Add a method in 5 minutes"). These files are
loaded by path by :mod:`bench.registry`, never imported as a package named ``datasets`` (the
Hugging Face library keeps that name); an installed distribution ships them as
``bench/datasets``.
"""
