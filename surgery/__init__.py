"""surgery: a declarative model-surgery language (.boom recipes) for boomerang distillation."""

__version__ = "0.1.0"
