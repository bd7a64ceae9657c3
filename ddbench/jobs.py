"""Typed entry points of the pipeline: the one way in for the ddbench-* commands and the Python API.

`prepare(cfg, kind)` checks the resolved config (and a method's options) before any data loads, picks the device
and loads the splits into a `Job`; `distill_job`, `evaluate_job`, `run_job`, `help_job` and `reference_job` run
the stages of `ddbench.pipeline` on it and return typed results. The commands (ddbench/cli) print and set exit
codes, the API (ddbench/api.py) checks its arguments and builds reports; the sequence itself lives only here.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from ddbench import pipeline
from ddbench.utils import DDBenchError

if TYPE_CHECKING:
    import torch

    from ddbench.artifact import Artifact
    from ddbench.data import Splits
    from ddbench.evaluation import EvalResult, ReferenceResult

Kind = Literal["run", "distill", "eval"]  # what the job does: distill and evaluate, distill only, evaluate only
DISTILLING: tuple[Kind, ...] = ("run", "distill")  # kinds whose method options are checked before data loads


@dataclass
class Job:
    """A checked job on its device with its data. `cfg` is the resolved config (smoke settings applied) that the
    stages read and the records store; evaluating an artifact may update its `eval` block (eval=infer_dyn)."""

    cfg: dict[str, Any]
    kind: Kind
    device: "torch.device"
    splits: "Splits"

    @property
    def writes_records(self) -> bool:
        """write_records: whether evaluations write records under paths.records (default true)."""
        return bool(self.cfg.get("write_records", True))

    @property
    def helper(self) -> bool:
        """helper=true: this ddbench-run shares another one's training runs instead of distilling."""
        return bool(self.cfg.get("helper"))

    @property
    def artifact_dir(self) -> Path:
        """Where the commands save the distilled artifact: <paths.output>/artifact."""
        return Path(self.cfg["paths"]["output"]) / "artifact"


@dataclass
class Distilled:
    """A distilled set: the artifact (in memory), the seconds distilling took (an earlier run's when `reused`
    from the cache of distilled sets, reuse_distilled=true) and where it was saved, if it was."""

    artifact: "Artifact"
    seconds: float
    reused: bool
    path: Path | None = None


@dataclass
class Evaluated:
    """An evaluation: the evaluator's result per architecture and the record files written (none if not asked)."""

    results: list["EvalResult"]
    records: list[Path] = field(default_factory=list)


@dataclass
class Ran:
    """A distillation followed by its evaluation (`run_job`)."""

    distilled: Distilled
    evaluated: Evaluated

    @property
    def artifact(self) -> "Artifact":
        return self.distilled.artifact

    @property
    def results(self) -> list["EvalResult"]:
        return self.evaluated.results

    @property
    def records(self) -> list[Path]:
        return self.evaluated.records


@dataclass
class Referenced:
    """The protocol's reference rows (whole dataset, teacher) and the record files written."""

    results: list["ReferenceResult"]
    records: list[Path] = field(default_factory=list)


def prepare(cfg: dict[str, Any], kind: Kind) -> Job:
    """Check `cfg` for `kind` (everything checkable without data, and the method's options when it distills),
    then pick the device and load the splits. A bad input raises DDBenchError before any data loads."""
    from ddbench.checks import check_config

    check_config(cfg, kind)
    if kind in DISTILLING:
        pipeline.check_method(cfg)
    device = pipeline.pick_device(cfg)
    return Job(cfg, kind, device, pipeline.load_splits(cfg, device))


def distill_job(job: Job, save_to: Path | None = None) -> Distilled:
    """Distill the configured set (or take it from the cache with reuse_distilled=true); saved to the folder
    `save_to` when given."""
    from ddbench.artifact import save_artifact

    artifact, seconds = pipeline.distill(job.cfg, job.splits, job.device)
    path = None if save_to is None else save_artifact(artifact, save_to)
    return Distilled(artifact, seconds, "reused_from" in artifact.meta, path)


def evaluate_job(
    job: Job, artifact: "Artifact", *, artifact_path: Path | None = None, distill_seconds: float | None = None,
    distill_reused: bool = False, command: str | None = None, overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None, record_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    write: bool | None = None,
) -> Evaluated:
    """Evaluate `artifact` under the job's protocol and, when `write` (default: the job's write_records), write one
    record per architecture. `overrides` decide the records' `shortened` (default: Hydra's task overrides);
    `extra` are more record fields; `record_config` makes the config the records store from the job's config
    after evaluating (default: that config)."""
    results = pipeline.evaluate(job.cfg, artifact, job.splits)
    if not (job.writes_records if write is None else write):
        return Evaluated(results)
    cfg = job.cfg if record_config is None else record_config(job.cfg)
    return Evaluated(results, pipeline.write_results(
        cfg, artifact, artifact_path, results, distill_seconds, job.device, command, distill_reused=distill_reused,
        overrides=overrides, extra=extra))


def run_job(
    job: Job, *, artifact_dir: Path | None = None, command: str | None = None, overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None, write: bool | None = None, hint_on_failure: bool = False,
    on_distilled: Callable[[Distilled], None] | None = None, on_evaluated: Callable[[Ran], None] | None = None,
) -> Ran:
    """Distill (saving the artifact to `artifact_dir` when given), evaluate it, write its records (see
    `evaluate_job`) and log the accuracies and distill seconds to the configured logger, which is closed at the
    end. `on_distilled` runs before the evaluation (e.g. to print where the artifact is, or to fill in `extra`
    from the set), `on_evaluated` after the records are written, before logging. With `hint_on_failure`, a failure
    while evaluating a saved artifact says it is kept and how to evaluate it later (the ddbench-run message)."""
    from ddbench.logger import open_logger

    logger = open_logger(job.cfg["logger"], job.cfg, job.cfg["paths"]["output"])
    try:
        distilled = distill_job(job, artifact_dir)
        if on_distilled is not None:
            on_distilled(distilled)
        saved = distilled.path
        with keep_artifact_on_failure(saved, job.cfg) if hint_on_failure and saved is not None else nullcontext():
            evaluated = evaluate_job(job, distilled.artifact, artifact_path=distilled.path,
                                     distill_seconds=distilled.seconds, distill_reused=distilled.reused,
                                     command=command, overrides=overrides, extra=extra, write=write)
        ran = Ran(distilled, evaluated)
        if on_evaluated is not None:
            on_evaluated(ran)
        logger.log({f"acc/{r.model}": r.mean for r in evaluated.results} | {"distill_seconds": distilled.seconds})
    finally:
        logger.close()
    return ran


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


def help_job(job: Job) -> None:
    """helper=true: share the training runs of the ddbench-run started with the same command (see
    `pipeline.help_evaluate`); writes no artifact and no record."""
    pipeline.help_evaluate(job.cfg, job.splits, job.device)


def reference_job(job: Job, *, command: str | None = None, write: bool | None = None) -> Referenced:
    """The protocol's reference rows on the job's data and, when `write` (default: the job's write_records), one
    record per row."""
    results = pipeline.references(job.cfg, job.splits)
    if not (job.writes_records if write is None else write):
        return Referenced(results)
    return Referenced(results, pipeline.write_references(job.cfg, results, job.device, command))
