"""The dataset registry: name → (metadata, loader of raw [0,1] pixels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ddbench.utils import DDBenchError

# A loader returns (train_x [N,C,H,W] float in [0,1], train_y [N] int64, test_x, test_y).
RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Loader = Callable[[Path, bool], RawSplits]


@dataclass(frozen=True)
class DatasetInfo:
    """Uniform metadata of a dataset, as the models and the artifact record it."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())
    train_min_per_class: int | None = None  # training images of the smallest class (None: known after loading)
    mirror_safe: bool = True  # a horizontal flip keeps every class (False for digits: a mirrored 2 is no 2)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Decorator: `@register_dataset(DatasetInfo(...))` over `loader(root, download) -> RawSplits`."""

    def wrap(loader: Loader) -> Loader:
        _REGISTRY[info.name] = (info, loader)
        return loader

    return wrap


def _entry(name: str) -> tuple[DatasetInfo, Loader]:
    import ddbench.data.sources  # noqa: F401  (registers the built-in datasets)

    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise DDBenchError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}.")
    return _REGISTRY[key]


def dataset_info(name: str) -> DatasetInfo:
    return _entry(name)[0]


def dataset_loader(name: str) -> Loader:
    return _entry(name)[1]


def list_datasets() -> list[str]:
    import ddbench.data.sources  # noqa: F401

    return sorted(_REGISTRY)
