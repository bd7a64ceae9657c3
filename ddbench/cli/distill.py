"""ddbench-distill: distill and save the artifact only."""

from __future__ import annotations

from typing import Any

from ddbench.cli.app import hydra_main


def distill(cfg: dict[str, Any]) -> str:
    from ddbench import pipeline
    from ddbench.checks import check_config

    check_config(cfg, "distill")
    pipeline.check_method(cfg)
    device = pipeline.pick_device(cfg)
    splits = pipeline.load_splits(cfg, device)
    artifact, seconds = pipeline.distill(cfg, splits, device)
    path = pipeline.save(artifact, cfg)
    print(f"artifact: {path} (distilled in {seconds:.1f} s)")
    return str(path)


def main() -> Any:
    return hydra_main(distill)()


if __name__ == "__main__":
    main()
