"""mtl-hetero-bench: multi-task learning methods compared on heterogeneous data."""

__version__ = "0.1.0"
