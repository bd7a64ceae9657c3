"""The method interface: a method turns a real training split into a small synthetic set."""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.utils import DDBenchError, make_generator

BUILTIN_MODULES = ("selection", "dm", "mtt", "ftd", "datm")


@dataclass
class DistillResult:
    """images [ipc*K, C, H, W] class-major; labels [ipc*K] int64 or [ipc*K, K] float logits; optional lr (0-d)."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class DistillDiverged(DDBenchError):
    """A distillation diverged; ``result`` holds its last good state (the pipeline saves it as an artifact)."""

    def __init__(self, message: str, result: DistillResult | None = None):
        super().__init__(message)
        self.result = result


class Method(abc.ABC):
    """Base class. Subclasses set `name` and implement `distill()`.

    options: the method's config block (a plain dict); model: the distillation model's config
    (name + kwargs); the generator on `device` is seeded from the run's seed.
    """

    name = "base"

    def __init__(
        self,
        splits: Splits,
        ipc: int,
        seed: int,
        device: torch.device,
        options: dict[str, Any] | None = None,
        model: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        cache: Cache | None = None,
    ):
        if ipc < 1:
            raise DDBenchError(f"ipc must be >= 1, got {ipc}.")
        self.splits = splits
        self.info = splits.info
        self.ipc = ipc
        self.seed = seed
        self.device = device
        self.options = dict(options or {})
        self.model_cfg = dict(model or {"name": "convnet"})
        self.augment_cfg = dict(augment or {})
        self.cache = cache or Cache()
        self.generator = make_generator(seed, device)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def hard_labels(self) -> torch.Tensor:
        """Class-major hard labels [ipc*K]."""
        return torch.arange(self.info.num_classes, device=self.device).repeat_interleave(self.ipc)

    def real_init(self) -> torch.Tensor:
        """ipc random real images per class, class-major [ipc*K, C, H, W]."""
        rows = self.splits.train.sample_per_class(self.ipc, self.generator)
        return self.splits.train.images[rows.flatten()].clone()

    def make_augment(self):
        """The DSA of the run's augment config, or None when disabled."""
        from ddbench.augment import DSA, DSAParams

        cfg = self.augment_cfg
        if not cfg.get("enabled", True):
            return None
        return DSA(cfg.get("strategy", "color_crop_cutout_flip_scale_rotate"), DSAParams(**cfg.get("ranges", {})))

    @abc.abstractmethod
    def distill(self) -> DistillResult:
        """Build the synthetic set."""


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"ddbench.methods.{module}")


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def create_method(name: str, **kwargs: Any) -> Method:
    _load_builtin()
    if name not in _METHODS:
        raise DDBenchError(f"unknown method {name!r}; valid names: {', '.join(list_methods())}.")
    return _METHODS[name](**kwargs)
