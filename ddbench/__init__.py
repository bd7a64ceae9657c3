"""ddbench: a fast, fair benchmark suite for dataset distillation."""

__version__ = "0.1.0"
