"""ddbench-distill: distill and save the artifact only."""

from __future__ import annotations

from typing import Any

from ddbench.cli.app import hydra_main


def distill(cfg: dict[str, Any]) -> str:
    from ddbench import jobs

    job = jobs.prepare(cfg, "distill")
    distilled = jobs.distill_job(job, save_to=job.artifact_dir)
    print(f"artifact: {distilled.path} (distilled in {distilled.seconds:.1f} s)")
    return str(distilled.path)


def main() -> Any:
    return hydra_main(distill)()


if __name__ == "__main__":
    main()
