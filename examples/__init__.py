"""Examples; a package so that ``examples.custom_runtime`` imports from the repository root."""
