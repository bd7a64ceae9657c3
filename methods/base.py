"""The method interface: a method turns a real training split into a small synthetic set."""

from __future__ import annotations

import abc
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import torch

from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.methods.options import MethodOptions
from ddbench.utils import DDBenchError, make_generator

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "ddbench.methods"


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
    """Base class. Subclasses are registered with @register_method(name), declare `Options` (a MethodOptions
    dataclass: the keys of their YAML) and implement `distill()`.

    options: the method's config block (a dict, validated into `self.opts`); model: the distillation model's
    config (name + kwargs); the generator on `device` is seeded from the run's seed.
    """

    name = "base"
    Options: type[MethodOptions] = MethodOptions

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
        self.opts = self.Options.from_dict(options, self.name)
        self.model_cfg = dict(model or {"name": "convnet"})
        self.augment_cfg = dict(augment or {})
        self.cache = cache or Cache()
        self.generator = make_generator(seed, device)

    @property
    def options(self) -> dict[str, Any]:
        """The validated options as a plain dict."""
        return self.opts.to_dict()

    def option(self, key: str, default: Any = None) -> Any:
        """The validated value of option `key` (`default` only for keys the Options class lacks)."""
        return getattr(self.opts, key, default)

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
_SCANNED: set[str] = set()


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _discover() -> None:
    """Import every module of the ddbench.methods package, then every `ddbench.methods` entry point (a module
    that registers its methods, or a Method subclass registered under the entry point's name)."""
    import ddbench.methods as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name not in _SCANNED:
            _SCANNED.add(info.name)
            importlib.import_module(info.name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _SCANNED:
            continue
        _SCANNED.add(key)
        try:
            loaded = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not hide the other methods
            log.warning("cannot load method plug-in %s (%s): %s", ep.name, ep.value, err)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Method) and loaded not in _METHODS.values():
            register_method(ep.name)(loaded)


def list_methods() -> list[str]:
    _discover()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    """The registered class of method `name`; a DDBenchError lists the valid names."""
    _discover()
    if name not in _METHODS:
        raise DDBenchError(f"unknown method {name!r}; valid names: {', '.join(list_methods())}.")
    return _METHODS[name]


def method_options(name: str, options: dict[str, Any] | None) -> MethodOptions:
    """The validated options of method `name` (cheap: no data is needed)."""
    return method_class(name).Options.from_dict(options, name)


def create_method(name: str, **kwargs: Any) -> Method:
    return method_class(name)(**kwargs)
