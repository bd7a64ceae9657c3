"""ddbench-eval artifact=PATH: evaluate a ddbench artifact or a reference-format folder and write records.

A ddbench artifact names its dataset; a reference folder (images_best.pt, ...) or an ImageFolder needs dataset=NAME.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddbench.cli.app import hydra_main, invoked_command
from ddbench.utils import DDBenchError


def dataset_was_given() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return any(o.split("=", 1)[0].lstrip("+~") in ("dataset", "dataset.name") for o in HydraConfig.get().overrides.task)


def evaluate(cfg: dict[str, Any]) -> float:
    from ddbench import jobs, pipeline
    from ddbench.artifact import load_artifact

    if not cfg.get("artifact"):
        raise DDBenchError("ddbench-eval needs artifact=PATH (a ddbench artifact folder or a folder with images_best.pt).")
    given = dataset_was_given()
    artifact = load_artifact(cfg["artifact"], dataset=cfg["dataset"]["name"] if given else None)
    if not given:
        cfg["dataset"]["name"] = artifact.dataset
    job = jobs.prepare(cfg, "eval")
    seconds = artifact.meta.get("distill_seconds")
    evaluated = jobs.evaluate_job(job, artifact, artifact_path=Path(cfg["artifact"]).expanduser().resolve(),
                                  distill_seconds=seconds, distill_reused=seconds is not None,
                                  command=invoked_command())
    for record in evaluated.records:
        print(f"record: {record}")
    print(pipeline.summary_rows(job.cfg, artifact, evaluated.results))
    return evaluated.results[0].mean


def main() -> Any:
    return hydra_main(evaluate)()


if __name__ == "__main__":
    main()
