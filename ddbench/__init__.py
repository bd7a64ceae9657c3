"""ddbench: a fast, fair benchmark suite for dataset distillation.

The Python API (see README "From Python"), imported on first use so that `import ddbench` stays fast (torch is
loaded only when a function needs it):

    report = ddbench.evaluate(images, labels, dataset="cifar10", protocol="dc")   # your own [N,C,H,W] set
    artifact = ddbench.distill("dm", "digits", ipc=10)                             # an in-memory artifact
    artifact, report = ddbench.run("dm", "digits", ipc=10)                         # distill, then evaluate
    frame = ddbench.leaderboard("leaderboard/records")                             # pandas DataFrame
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_LAZY = {
    "evaluate": "ddbench.api", "distill": "ddbench.api", "run": "ddbench.api", "load_artifact": "ddbench.api",
    "leaderboard": "ddbench.api", "list_methods": "ddbench.api", "list_datasets": "ddbench.api",
    "list_models": "ddbench.api", "list_protocols": "ddbench.api", "EvalReport": "ddbench.api_report",
    "RunResult": "ddbench.api_report", "Artifact": "ddbench.artifact", "DDBenchError": "ddbench.utils",
}
__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from ddbench.api import (
        distill, evaluate, leaderboard, list_datasets, list_methods, list_models, list_protocols, load_artifact, run,
    )
    from ddbench.api_report import EvalReport, RunResult
    from ddbench.artifact import Artifact
    from ddbench.utils import DDBenchError


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddbench' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
