"""What the Python API returns: an evaluation report (per model, per seed) and a distill-then-evaluate result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pandas as pd

    from ddbench.artifact import Artifact
    from ddbench.evaluation import EvalResult

FRAME_COLUMNS = ["dataset", "protocol", "label_type", "ipc", "model", "mean", "std", "n_seeds", "seeds",
                 "accuracies", "lr", "lr_source", "eval_seconds", "score_seconds"]
SEED_COLUMNS = ["dataset", "protocol", "label_type", "ipc", "model", "seed", "accuracy", "lr"]


@dataclass
class EvalReport:
    """The evaluation of one synthetic set under one protocol, for every architecture it names.

    Accuracies are fractions in [0, 1] (test accuracy after the last epoch), one per evaluation seed; std is the
    population std (ddof=0), as in records. `results` holds the evaluator's own EvalResult objects, `config` the
    resolved config the run used (as a record stores it) and `records` the record files written (records=DIR).
    """

    dataset: str
    protocol: str
    ipc: int
    label_type: str  # 'hard' or 'soft': what the networks trained on
    results: list["EvalResult"]
    config: dict[str, Any]
    images_digest: str
    records: list[Path] = field(default_factory=list)

    def per_model(self, get: "Callable[[EvalResult], Any]") -> dict[str, Any]:
        """{model: get(its EvalResult)} over the evaluated architectures."""
        return {r.model: get(r) for r in self.results}

    @property
    def models(self) -> list[str]:
        return [r.model for r in self.results]

    @property
    def seeds(self) -> dict[str, list[int]]:
        return self.per_model(lambda r: list(r.seeds))

    @property
    def accuracies(self) -> dict[str, list[float]]:
        """Per model, the test accuracy of each seed (fractions)."""
        return self.per_model(lambda r: list(r.accuracies))

    @property
    def mean(self) -> dict[str, float]:
        return self.per_model(lambda r: r.mean)

    @property
    def std(self) -> dict[str, float]:
        return self.per_model(lambda r: r.std)

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """Per model, DD-Ranking's fair scores the protocol asked for (eval.scores: hlr, ior, lrs, ars) and their
        parts; empty dicts when none were asked."""
        return self.per_model(lambda r: dict(r.scores))

    @property
    def seconds(self) -> dict[str, float]:
        """Per model, the training time of its lr choice and evaluation (with reused or resumed parts)."""
        return self.per_model(lambda r: r.seconds)

    @property
    def lr(self) -> dict[str, float]:
        return self.per_model(lambda r: r.lr)

    def to_frame(self, per_seed: bool = False) -> "pd.DataFrame":
        """One row per model (FRAME_COLUMNS plus one column per score), or with per_seed one row per (model, seed)
        (SEED_COLUMNS)."""
        import pandas as pd

        base = {"dataset": self.dataset, "protocol": self.protocol, "label_type": self.label_type, "ipc": self.ipc}
        if per_seed:
            rows = [base | {"model": r.model, "seed": s, "accuracy": a, "lr": r.lr}
                    for r in self.results for s, a in zip(r.seeds, r.accuracies)]
            return pd.DataFrame(rows, columns=SEED_COLUMNS)
        rows, score_names = [], []
        for r in self.results:
            score_names += [name for name in r.scores if name not in score_names]
            rows.append(base | {"model": r.model, "mean": r.mean, "std": r.std, "n_seeds": len(r.accuracies),
                                "seeds": list(r.seeds), "accuracies": list(r.accuracies), "lr": r.lr,
                                "lr_source": r.lr_source, "eval_seconds": r.seconds,
                                "score_seconds": r.score_seconds} | dict(r.scores))
        return pd.DataFrame(rows, columns=FRAME_COLUMNS + score_names)

    def summary(self) -> str:
        """One line per model: `model: mean ± std % (n seeds, s)`."""
        return "\n".join(f"{r.model}: {100 * r.mean:.2f} ± {100 * r.std:.2f} % ({len(r.accuracies)} seeds, "
                         f"{r.seconds:.1f} s)" for r in self.results)

    def __str__(self) -> str:
        head = f"EvalReport({self.dataset}, {self.protocol}, ipc {self.ipc}, {self.label_type} labels)"
        return f"{head}\n{self.summary()}"


@dataclass
class RunResult:
    """What `ddbench.run` returns: the distilled artifact (in memory; saved when artifact_dir was given), the
    seconds distilling took and the evaluation report."""

    artifact: "Artifact"
    report: EvalReport
    distill_seconds: float
    artifact_path: Path | None = None

    def __iter__(self):  # artifact, report = ddbench.run(...)
        return iter((self.artifact, self.report))
