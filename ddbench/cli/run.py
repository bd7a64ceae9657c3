"""ddbench-run: distill, save the artifact, evaluate, write records, print a summary row per eval model.

With helper=true (and reuse_distilled=true), a second ddbench-run of the same command shares the first one's
training runs instead (see ddbench.pipeline.help_evaluate).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ddbench.cli.app import hydra_main, invoked_command
from ddbench.utils import DDBenchError


def run(cfg: dict[str, Any]) -> float:
    from ddbench import pipeline
    from ddbench.checks import check_config
    from ddbench.logger import open_logger

    check_config(cfg, "run")
    pipeline.check_method(cfg)
    device = pipeline.pick_device(cfg)
    splits = pipeline.load_splits(cfg, device)
    if cfg.get("helper"):
        pipeline.help_evaluate(cfg, splits, device)
        print("helper: no training run is left that another process is not running or has not finished")
        return float("nan")
    logger = open_logger(cfg["logger"], cfg, cfg["paths"]["output"])
    try:
        artifact, seconds = pipeline.distill(cfg, splits, device)
        path = pipeline.save(artifact, cfg)
        how = f"reused from {artifact.meta['reused_from']}, distilled" if "reused_from" in artifact.meta else "distilled"
        print(f"artifact: {path} ({how} in {seconds:.1f} s)")
        with keep_artifact_on_failure(path, cfg):
            results = pipeline.evaluate(cfg, artifact, splits)
            if cfg.get("write_records", True):
                reused = "reused_from" in artifact.meta
                for record in pipeline.write_results(cfg, artifact, path, results, seconds, device, invoked_command(),
                                                     distill_reused=reused):
                    print(f"record: {record}")
        print(pipeline.summary_rows(cfg, artifact, results))
        logger.log({f"acc/{r.model}": r.mean for r in results} | {"distill_seconds": seconds})
    finally:
        logger.close()
    return results[0].mean


@contextmanager
def keep_artifact_on_failure(path: Path, cfg: dict[str, Any]) -> Iterator[None]:
    """A failure after distilling keeps the saved artifact and says how to evaluate it later."""
    hint = (f"the distilled artifact is kept at {path}; evaluate it later with "
            f"`ddbench-eval artifact={path} paths.records={cfg['paths']['records']}`.")
    try:
        yield
    except DDBenchError as err:
        raise DDBenchError(f"{err} Nothing was lost: {hint}") from err
    except BaseException:
        print(f"note: {hint}", file=sys.stderr)
        raise


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
