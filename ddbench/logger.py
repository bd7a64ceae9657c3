"""Optional experiment loggers. wandb is imported only when logger=wandb, and every run is closed."""

from __future__ import annotations

from typing import Any


class NullLogger:
    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg: dict[str, Any], config: dict[str, Any], output_dir: str):
        import wandb

        self.run = wandb.init(
            project=cfg.get("project", "ddbench"), entity=cfg.get("entity"), group=cfg.get("group"),
            tags=list(cfg.get("tags") or []), mode=cfg.get("mode", "offline"), dir=output_dir, config=config,
            reinit="create_new",
        )

    def log(self, metrics: dict[str, Any]) -> None:
        self.run.log(metrics)

    def close(self) -> None:
        self.run.finish()


def open_logger(cfg: dict[str, Any], config: dict[str, Any], output_dir: str) -> NullLogger | WandbLogger:
    if cfg.get("name", "none") == "wandb" and cfg.get("mode") != "disabled":
        return WandbLogger(cfg, config, output_dir)
    return NullLogger()
