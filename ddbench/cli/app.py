"""Shared Hydra entry point: every ddbench-* Hydra command composes ddbench.conf/config.yaml."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from ddbench.utils import DDBenchError

log = logging.getLogger("ddbench")
Task = Callable[[dict[str, Any]], Any]


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

    return app
