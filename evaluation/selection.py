"""Choices a protocol makes (a learning rate from a grid) are made on a validation split held out of train."""

from __future__ import annotations

import math

import torch

from ddbench.data import ClassTensors
from ddbench.utils import make_generator


def holdout_split(train: ClassTensors, fraction: float, seed: int) -> tuple[ClassTensors, ClassTensors]:
    """(rest, val): round(fraction·n_c) rows of every class c (at least 1, at most n_c − 1) go to val.

    The rows are drawn with a CPU generator seeded by `seed`, so the split does not depend on the device.
    """
    gen = make_generator(seed)
    val_rows, rest_rows = [], []
    for c in range(train.num_classes):
        start, count = int(train.offsets[c]), int(train.counts[c])
        k = min(max(1, int(math.floor(fraction * count + 0.5))), count - 1) if count > 1 else 0
        perm = torch.randperm(count, generator=gen) + start
        val_rows.append(perm[:k].sort().values)
        rest_rows.append(perm[k:].sort().values)
    val_idx = torch.cat(val_rows).to(train.images.device)
    rest_idx = torch.cat(rest_rows).to(train.images.device)
    rest = ClassTensors.from_unsorted(train.images[rest_idx], train.labels[rest_idx], train.num_classes)
    val = ClassTensors.from_unsorted(train.images[val_idx], train.labels[val_idx], train.num_classes)
    return rest, val


def best_lr(grid: list[float], val_accuracy: list[float]) -> float:
    """The lr with the highest mean validation accuracy (the first one on ties)."""
    best = max(range(len(grid)), key=lambda i: (val_accuracy[i], -i))
    return grid[best]
