"""Method options: one dataclass per method, validated once, before any data is loaded.

A method declares `Options`, a subclass of MethodOptions whose fields are the keys of its YAML (the YAML states
the published defaults; the dataclass defaults are the same values, so a method also runs without its YAML).
Constraints sit on the fields: `option(default, low=1)`, `option(default, positive=True)`,
`option(default, choices=(...))`; cross-field rules go in `check(self, ctx)`. Unknown keys are rejected with
the valid ones listed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ddbench.training.recipe import without_neutral
from ddbench.utils import DDBenchError

# Options that only say how a run is watched, checked or saved, never what it computes: left out of the keys of
# distilled sets (ddbench.pipeline.distill_key) and of checkpoints (which also leave out `iterations`, so a run can
# be continued to more iterations).
RUN_CONTROL_OPTIONS = ("progress", "resume", "checkpoint_every", "guard_every", "log_every")


def option(default: Any = None, *, low: float | None = None, positive: bool = False,
           choices: tuple[Any, ...] | None = None, factory: Any = None) -> Any:
    """A dataclass field with a constraint: value >= low, value > 0, or value in choices (None skips checks)."""
    meta = {"low": low, "positive": positive, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def reject_unknown(cfg: dict[str, Any], valid: list[str], where: str) -> None:
    """One DDBenchError naming the keys of `cfg` outside `valid` (and the valid ones) for the block `where`."""
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise DDBenchError(f"unknown {where} option(s) {unknown}; valid options: {valid}.")


def _nested(default: Any, value: Any) -> Any:
    """A config block for a nested dataclass option (e.g. `experts`): the method's default, updated by the block."""
    if not dataclasses.is_dataclass(default) or not hasattr(type(default), "from_dict"):
        return value
    if isinstance(value, type(default)):
        return value
    allowed = type(default).valid_options() if hasattr(type(default), "valid_options") else [
        f.name for f in fields(default)]
    base = {name: getattr(default, name) for name in allowed}
    return type(default).from_dict({**base, **dict(value or {})})


@dataclass
class MethodOptions:
    """Options every method takes. `progress`: show progress bars (set by the pipeline from the run's config)."""

    progress: bool = False

    @classmethod
    def valid_keys(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, cfg: "dict[str, Any] | MethodOptions | None", method: str) -> "MethodOptions":
        """Validated options of `method` from its config block (name and smoke already removed)."""
        if isinstance(cfg, cls):
            return cfg
        cfg = dict(cfg or {})
        reject_unknown(cfg, cls.valid_keys(), method)
        values = {}
        for f in fields(cls):
            if f.name in cfg:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                values[f.name] = _nested(default, cfg[f.name])
        opts = cls(**values)
        opts.check_fields(method)
        opts.check(method)
        return opts

    def check_fields(self, method: str) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or not f.metadata:
                continue
            choices, low = f.metadata.get("choices"), f.metadata.get("low")
            if choices is not None and value not in choices:
                raise DDBenchError(f"{method}: method.{f.name} must be one of {', '.join(map(repr, choices))}, "
                                   f"got {value!r}.")
            if f.metadata.get("positive") and not float(value) > 0:
                raise DDBenchError(f"{method}: method.{f.name} must be > 0, got {value!r}.")
            if low is not None and not float(value) >= low:
                raise DDBenchError(f"{method}: method.{f.name} must be >= {low:g}, got {value!r}.")

    def check(self, method: str) -> None:
        """Cross-field rules of a method (override)."""

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (checkpoint keys hold it), nested recipes' KEY_NEUTRAL fields at their
        default left out (ddbench.training.recipe.without_neutral), so keys of earlier runs stay valid."""
        return without_neutral(dataclasses.asdict(self))
