"""ddbench-run: distill, save the artifact, evaluate, write records, print a summary row per eval model.

With helper=true (and reuse_distilled=true), a second ddbench-run of the same command shares the first one's
training runs instead (see ddbench.pipeline.help_evaluate).
"""

from __future__ import annotations

import sys
from typing import Any

from ddbench.cli.app import hydra_main, invoked_command


def run(cfg: dict[str, Any]) -> float:
    from ddbench import jobs, pipeline

    job = jobs.prepare(cfg, "run")
    if job.helper:
        jobs.help_job(job)
        print("helper: no training run is left that another process is not running or has not finished")
        return float("nan")

    def show_artifact(distilled: jobs.Distilled) -> None:
        how = (f"reused from {distilled.artifact.meta['reused_from']}, distilled" if distilled.reused
               else "distilled")
        print(f"artifact: {distilled.path} ({how} in {distilled.seconds:.1f} s)")

    def show_results(ran: jobs.Ran) -> None:
        for record in ran.records:
            print(f"record: {record}")
        print(pipeline.summary_rows(job.cfg, ran.artifact, ran.results))

    ran = jobs.run_job(job, artifact_dir=job.artifact_dir, command=invoked_command(), hint_on_failure=True,
                       on_distilled=show_artifact, on_evaluated=show_results)
    return ran.results[0].mean


# Overrides that say what to run; without any of them ddbench-run runs the quickstart.
CHOICE_KEYS = {"experiment", "method", "dataset", "ipc", "eval", "model"}


def wants_quickstart(argv: list[str]) -> bool:
    keys = {arg.split("=", 1)[0].lstrip("+~").split(".", 1)[0] for arg in argv if "=" in arg}
    return not keys & CHOICE_KEYS and not any(arg.startswith("-") for arg in argv)


def main() -> Any:
    if wants_quickstart(sys.argv[1:]):
        sys.argv.append("experiment=quickstart")
    return hydra_main(run)()


if __name__ == "__main__":
    main()
