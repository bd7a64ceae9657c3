"""Seeded inputs of the pinned trainer cases (tests/test_trainer.py): tiny float64 sets, networks and recipes.

tests/data/trainer_reference.safetensors holds the weights these cases gave with the three training loops the
one trainer replaced (the `dc` loop, the kd loop and the expert loop), at the same seeds.
"""

from __future__ import annotations

import torch

from ddbench.data import ClassTensors, DatasetInfo, Splits

INFO = DatasetInfo("pinned", channels=1, image_size=8, num_classes=3, mean=(0.0,), std=(1.0,))
MODEL = {"width": 4, "depth": 1}
SEEDS = [3, 4]


def data(n: int = 18, per_net: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [n,1,8,8] or [per_net,n,...] float64, hard labels [n] / [per_net,n], logits [n,3] / [per_net,n,3])."""
    g = torch.Generator().manual_seed(7)
    lead = (per_net,) if per_net else ()
    images = torch.randn(*lead, n, *INFO.shape, generator=g, dtype=torch.float64)
    labels = torch.arange(n).remainder(3).expand(*lead, n).contiguous()
    logits = 2 * torch.randn(*lead, n, 3, generator=g, dtype=torch.float64)
    return images, labels, logits


def splits() -> Splits:
    """A float64 split of 30 train / 9 test images for the expert case."""
    g = torch.Generator().manual_seed(11)
    make = lambda n: ClassTensors.from_unsorted(  # noqa: E731
        torch.randn(n, *INFO.shape, generator=g, dtype=torch.float64), torch.arange(n).remainder(3), 3)
    return Splits(INFO, make(30), make(9))


class LinearTeacher:
    """A fixed float64 linear teacher: x [B,1,8,8] → logits [B,3]."""

    def __init__(self):
        self.weight = torch.randn(3, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64) / 8

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.t()


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
