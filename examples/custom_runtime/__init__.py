"""A custom runtime: a small scikit-learn sentiment classifier served from a ``Model`` class."""
