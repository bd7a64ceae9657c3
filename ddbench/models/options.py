"""Declared model options: every registered model states its keyword options and their valid values once.

`register_model(name, builds=Cls, options={"width": IntRange(1), "norm": Choice(NORMS)})` declares them next to
the factory; the registry checks at import that the declared names are exactly the keyword parameters of the
builder (less the ones its factory sets itself), so an option added to a model's signature cannot be left
undeclared. `ModelSpec.check` refuses an unknown key or a bad value with one line naming the option, the value, the
valid range or choices and an example fix; it needs no data, so runs call it before any data loads
(ddbench.checks), and `create_model` calls it before building.

A value of None always passes: it means "the model's default" (create_model drops it).
"""

from __future__ import annotations

import difflib
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ddbench.utils import DDBenchError

BASE_ARGS = ("channels", "num_classes", "image_size")  # what every factory gets from the dataset, never an option
# (option name, "…is too deep for 16px images; use depth <= 4") for options that do not fit the images, else None
ShapeRule = Callable[[Mapping[str, Any], int, int], "tuple[str, str] | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def hydra_value(value: Any) -> str:
    """`value` as it is written on a Hydra command line: [64,M,128], true, batchnorm, 0.5."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class Option(ABC):
    """What one model option accepts (an abstract base: IntRange, Number, Choice, IntList, LayerList). `note`: a few words said after the valid values (why, or what else to use);
    `suggest`: the value an error's fix shows when the model's default is None (else `example()`)."""

    note: str = field(default="", kw_only=True)
    suggest: Any = field(default=None, kw_only=True)

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether `value` is a valid setting."""

    @abstractmethod
    def describe(self) -> str:
        """The valid values in words: 'an int >= 1', "one of 'a', 'b'"."""

    @abstractmethod
    def example(self) -> Any:
        """A valid value (used in the fix an error suggests when the model's default is None)."""


@dataclass(frozen=True)
class IntRange(Option):
    """An int (not a bool) in [low, high]; either bound may be None (open)."""

    low: int | None = None
    high: int | None = None

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an int in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an int >= {self.low}"
        return "an int" if self.high is None else f"an int <= {self.high}"

    def example(self) -> Any:
        return self.low if self.low is not None else 1 if self.high is None else min(1, self.high)


@dataclass(frozen=True)
class Number(Option):
    """A finite int or float in the interval from low to high (open ends where low_open / high_open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"a number {'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def example(self) -> Any:
        if self.low is not None and self.high is not None:
            return (self.low + self.high) / 2
        if self.low is None:
            return 1.0 if self.high is None else self.high - 1.0
        return self.low + 1.0


@dataclass(frozen=True)
class Choice(Option):
    """One of `choices`."""

    choices: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        return f"one of {', '.join(map(repr, self.choices))}" if len(self.choices) > 1 else repr(self.choices[0])

    def example(self) -> Any:
        return self.choices[0]


@dataclass(frozen=True)
class IntList(Option):
    """A list of `length` ints, each >= low (ResNet's blocks per stage)."""

    length: int = 1
    low: int = 1

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (list, tuple)) and len(value) == self.length
                and all(_is_int(v) and v >= self.low for v in value))

    def describe(self) -> str:
        return f"a list of {self.length} ints >= {self.low}"

    def example(self) -> Any:
        return [self.low] * self.length


@dataclass(frozen=True)
class LayerList(Option):
    """A list of layer widths (ints >= 1) and `marker` strings (VGG's cfg: a conv, or a max-pool), >= 1 width."""

    marker: str = "M"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or not any(_is_int(v) for v in value):
            return False
        return all(v == self.marker if isinstance(v, str) else _is_int(v) and v >= 1 for v in value)

    def describe(self) -> str:
        return f"a list of conv widths (ints >= 1) and {self.marker!r} (a max-pool), with at least one width"

    def example(self) -> Any:
        return [64, self.marker, 128, self.marker]


def keyword_parameters(builder: Callable[..., Any], fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword parameters of `builder` (a class: its __init__) that a user may set, with their defaults:
    all named parameters but the dataset's BASE_ARGS, `fixed` (set by the factory itself) and *args/**kwargs."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(builder).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in params if p.kind in kinds and p.name not in BASE_ARGS + fixed and p.name != "self"}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model's declared options, their defaults (from the builder's signature) and a shape rule."""

    name: str
    options: Mapping[str, Option]
    defaults: Mapping[str, Any]
    rule: ShapeRule | None = None

    @classmethod
    def declare(cls, name: str, builder: Callable[..., Any], options: Mapping[str, Option] | None,
                fixed: tuple[str, ...] = (), rule: ShapeRule | None = None) -> "ModelSpec":
        """The spec of `name`, refusing (TypeError, at import) options that differ from the builder's parameters."""
        options = dict(options or {})
        params = keyword_parameters(builder, fixed)
        if set(options) != set(params):
            missing, extra = sorted(set(params) - set(options)), sorted(set(options) - set(params))
            raise TypeError(f"register_model({name!r}): declare every keyword option of {builder.__qualname__} "
                            f"(undeclared: {missing}; not parameters: {extra}), or list it in fixed=.")
        # a signature default the option refuses is replaced by the factory (the _bn variants' norm): its example
        defaults = {k: v if v is None or options[k].accepts(v) else options[k].example() for k, v in params.items()}
        return cls(name, options, defaults, rule)

    def example_value(self, option: str) -> Any:
        default, spec = self.defaults.get(option), self.options[option]
        if default is not None:
            return default
        return spec.example() if spec.suggest is None else spec.suggest

    def check(self, values: Mapping[str, Any], where: str | None = None,
              shape: tuple[int, int] | None = None) -> None:
        """DDBenchError for the first unknown key or bad value of `values`; with shape (channels, image_size)
        also options that do not fit such images. where: the options' config prefix ('model',
        'eval.model_kwargs.convnet'); None when they are create_model's keyword arguments."""

        def setting(option: str, value: Any) -> str:
            return f"{where}.{option}={hydra_value(value)}" if where else f"{option}={value!r}"

        named = "" if (where or "").endswith(f".{self.name}") else f" ({self.name})"  # kwargs blocks name it

        def subject(option: str) -> str:
            return f"{where}.{option}{named}" if where else f"{self.name} option {option}"

        values = {k: v for k, v in values.items() if v is not None}
        for option, value in values.items():
            if option not in self.options:
                raise DDBenchError(self._unknown(option, where, setting))
            spec = self.options[option]
            if not spec.accepts(value):
                note = f" ({spec.note})" if spec.note else ""
                raise DDBenchError(f"{subject(option)} must be {spec.describe()}{note}, got {value!r}; "
                                   f"e.g. {setting(option, self.example_value(option))}.")
        if self.rule is not None and shape is not None:
            found = self.rule({**self.defaults, **values}, *shape)
            if found is not None:
                option, problem = found
                value = values.get(option, self.defaults.get(option))
                given = f"{setting(option, value)}{named}" if where else f"{self.name} {setting(option, value)}"
                raise DDBenchError(f"{given} {problem}.")

    def _unknown(self, option: str, where: str | None, setting: Callable[[str, Any], str]) -> str:
        given = f"{where}.{option}" if where else repr(option)
        if not self.options:
            block = (f" (model={self.name} selects its own config block; model.name={self.name} keeps the "
                     "options of the model block it replaces)") if where == "model" else ""
            return f"{self.name} takes no options, got {given}; remove it{block}."
        valid = sorted(self.options)
        close = (difflib.get_close_matches(option, valid, n=1) or valid)[0]
        return (f"unknown {self.name} option {given}; valid options: {', '.join(valid)}; "
                f"e.g. {setting(close, self.example_value(close))}.")
