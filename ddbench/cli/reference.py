"""ddbench-reference dataset=D eval=P: the reference rows a table of protocol P prints beside its methods.

Writes one record per evaluation model with the accuracy of that model trained on the whole real train set (the
full-data run of HLR: hard labels, the protocol's augmentation, `eval.full_data` epochs; cached, so runs that
compute HLR share it) and, for a protocol with a teacher (kd, cda, infer), one record with the teacher's test
accuracy. The records have `reference` set and no ipc; the leaderboard shows them as the `whole dataset` and
`teacher` rows. Nothing is distilled.
"""

from __future__ import annotations

from typing import Any

from ddbench.cli.app import hydra_main, invoked_command


def reference(cfg: dict[str, Any]) -> float:
    from ddbench import jobs, pipeline

    job = jobs.prepare(cfg, "eval")
    referenced = jobs.reference_job(job, command=invoked_command())
    for path in referenced.records:
        print(f"record: {path}")
    print(pipeline.reference_rows(job.cfg, referenced.results))
    return referenced.results[0].accuracies[0]


def main() -> Any:
    return hydra_main(reference)()


if __name__ == "__main__":
    main()
