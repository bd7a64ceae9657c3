"""Model registry: `@register_model(name, builds=Cls, options={...})` over factories
`fn(channels, num_classes, image_size, **kw) -> nn.Module`, each with its declared options (ddbench.models.options).

`create_model("timm:<name>", ...)` builds any timm model at small resolution. `check_model_options` validates a
model's options without building it (what runs do before any data loads).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Mapping

from torch import nn

from ddbench.models.options import ModelSpec, Option, ShapeRule
from ddbench.utils import DDBenchError

Factory = Callable[..., nn.Module]
_MODELS: dict[str, Factory] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(*names: str, builds: Callable[..., Any] | None = None,
                   options: Mapping[str, Option] | None = None, fixed: tuple[str, ...] = (),
                   rule: ShapeRule | None = None) -> Callable[[Factory], Factory]:
    """Register a factory under `names` with its options: `options` must name exactly the keyword parameters of
    `builds` (the class or function the factory forwards its keyword arguments to; default: the factory itself)
    less `fixed`, the ones the factory sets itself. `rule(options, channels, image_size)` flags options that do
    not fit the images (see ModelSpec)."""

    def wrap(factory: Factory) -> Factory:
        for name in names:
            _SPECS[name] = ModelSpec.declare(name, builds or factory, options, fixed, rule)
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


def model_spec(name: str) -> ModelSpec:
    """The declared options of registered model `name` (not timm: names)."""
    _load_builtin()
    key = name.lower()
    if key not in _SPECS:
        raise DDBenchError(f"unknown model {name!r}; valid names: {', '.join(list_models())}, or timm:<name>.")
    return _SPECS[key]


def check_model_options(name: str, options: Mapping[str, Any] | None, where: str | None = None,
                        shape: tuple[int, int] | None = None) -> None:
    """One-line DDBenchError for an unknown model, an unknown option or a bad value, without building anything.

    where: the config prefix of the options ('model', 'eval.model_kwargs.convnet'), named in the message with a
    fix; None for create_model's keyword arguments. shape: (channels, image_size) of the images, when known,
    to also refuse options that do not fit them (e.g. a ConvNet too deep for 16 px). Options set to None pass.
    """
    options = dict(options or {})
    if name.lower().startswith("timm:"):
        from ddbench.models.zoo import check_timm

        check_timm(name.split(":", 1)[1], options, where)
        return
    model_spec(name).check(options, where, shape)


def create_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a fresh model. Options set to None are dropped, so a config can leave them unset; the others are
    checked against the model's declared options first."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    check_model_options(name, kwargs, shape=(channels, image_size))
    if name.lower().startswith("timm:"):
        from ddbench.models.zoo import timm_model

        return timm_model(name.split(":", 1)[1], channels, num_classes, image_size, **kwargs)
    return _MODELS[name.lower()](channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)
