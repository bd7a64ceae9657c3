"""Shared Hydra entry point: every ddbench-* Hydra command composes ddbench.conf/config.yaml."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from ddbench.utils import DDBenchError

log = logging.getLogger("ddbench")
Task = Callable[[dict[str, Any]], Any]
CONFIG_ENTRY_POINTS = "ddbench.configs"


def plugin_search_path() -> list[str]:
    """Hydra search-path entries of installed packages' configs: each `ddbench.configs` entry point names a
    package that holds config groups (e.g. method/NAME.yaml), added as pkg://<package>."""
    return sorted({f"pkg://{ep.value}" for ep in entry_points(group=CONFIG_ENTRY_POINTS)})


def with_plugin_search_path(argv: list[str]) -> list[str]:
    """argv with the plug-ins' config packages appended to hydra.searchpath (merged with a user's own list)."""
    extra = plugin_search_path()
    if not extra:
        return argv
    out, given = [], []
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            given = [p.strip() for p in arg.split("=", 1)[1].strip("[]").split(",") if p.strip()]
        else:
            out.append(arg)
    paths = given + [p for p in extra if p not in given]
    return [*out, f"hydra.searchpath=[{','.join(paths)}]"]


def invoked_command() -> str:
    return " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_main(task: Task) -> Callable[[], Any]:
    """Wrap task(plain_config) as a Hydra app; a DDBenchError prints one clear line (exit 2 in a single run,
    logged and skipped in a sweep so the other jobs go on)."""

    @hydra.main(version_base="1.3", config_path="pkg://ddbench.conf", config_name="config")
    def app(cfg: DictConfig) -> Any:
        from ddbench.pipeline import resolved_config

        try:
            return task(resolved_config(cfg))
        except DDBenchError as err:
            if _is_multirun():
                log.error("job failed: %s", err)
                return None
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def main() -> Any:
        sys.argv[1:] = with_plugin_search_path(sys.argv[1:])
        return app()

    return main
