"""Differentiable augmentation for distillation (DSA)."""

from ddbench.augment.dsa import DSA, VALID_OPS, DSADraw, DSAParams

__all__ = ["DSA", "DSADraw", "DSAParams", "VALID_OPS"]
