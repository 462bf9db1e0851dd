"""retention: keeps container registries at a sane size."""

__version__ = "0.1.0"
