"""The built-in methods: one file per method (architecture × weighting, defaults, the paper cited).

Add a method by dropping a file here (README, "Add a method in 5 minutes"). These files are
loaded by path by :mod:`bench.registry`, never imported as a package named ``methods``; an
installed distribution ships them as ``bench/methods``.
"""
