"""Model registry: `@register_model(name)` over factories `fn(channels, num_classes, image_size, **kw) -> nn.Module`.

`create_model("timm:<name>", ...)` builds any timm model at small resolution.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

from ddbench.utils import DDBenchError

Factory = Callable[..., nn.Module]
_MODELS: dict[str, Factory] = {}


def register_model(*names: str) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        for name in names:
            _MODELS[name] = factory
        return factory

    return wrap


def _load_builtin() -> None:
    import ddbench.models.convnet  # noqa: F401
    import ddbench.models.efficientnet  # noqa: F401
    import ddbench.models.mobilenet  # noqa: F401
    import ddbench.models.zoo  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    _load_builtin()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a fresh model. Options set to None are dropped, so a config can leave them unset."""
    _load_builtin()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    key = name.lower()
    if key.startswith("timm:"):
        from ddbench.models.zoo import timm_model

        return timm_model(name.split(":", 1)[1], channels, num_classes, image_size, **kwargs)
    if key not in _MODELS:
        raise DDBenchError(f"unknown model {name!r}; valid names: {', '.join(list_models())}, or timm:<name>.")
    return _MODELS[key](channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)
