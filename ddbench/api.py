"""The Python API: distill, evaluate your own images and read the board, through the pipeline the CLI runs.

Every function composes ddbench's Hydra config (package `ddbench.conf`) with the compose API, exactly as the
`ddbench-*` commands do, so `overrides=["eval.epochs=300"]` means what it means on the command line, and then
calls the entry points of `ddbench.jobs` that the commands call (same checks, seeds, records and caches of
teachers, baselines and finished runs); this module only checks its arguments and builds the reports.
A bad input raises `DDBenchError` with the one-line message the CLI prints, before any data loads or trains.

Shapes: images [N,C,H,W] float (raw pixels in [0,1], or the dataset's normalized space with normalized=True),
labels [N] int64 class indices (hard) or [N,K] float logits (soft), K = the dataset's class count.
"""

from __future__ import annotations

import importlib.resources
import tempfile
import time
import uuid
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ddbench.api_report import EvalReport, RunResult
from ddbench.utils import DDBenchError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ddbench.artifact import Artifact
    from ddbench.data import Splits
    from ddbench.evaluation import EvalResult

SOURCE = "api"  # the records' `source`
DISTILL_ONLY_KEYS = ("model", "augment")  # top-level config of the distillation, absent from evaluate()'s records


# ------------------------------------------------------------------------------------------------ names
def config_names(group: str) -> list[str]:
    """The options of a config group (what `group=NAME` accepts): conf/<group>/*.yaml of ddbench and of the
    config packages that installed packages add (entry-point group `ddbench.configs`)."""
    packages = ["ddbench.conf", *sorted({ep.value for ep in entry_points(group="ddbench.configs")})]
    names: set[str] = set()
    for package in packages:
        try:
            folder = importlib.resources.files(package) / group
            names |= {p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")}
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
    return sorted(names)


def list_methods() -> list[str]:
    """The distillation methods (`method=NAME`), installed packages' included."""
    from ddbench.methods import list_methods as methods

    return methods()


def list_datasets() -> list[str]:
    """The datasets `dataset=NAME` accepts (`imagefolder` reads any folder at dataset.root)."""
    return config_names("dataset")


def list_models() -> list[str]:
    """The evaluation/distillation architectures (any timm model is also accepted as `timm:<name>`)."""
    from ddbench.models import list_models as models

    return models()


def list_protocols() -> list[str]:
    """The evaluation protocols (`eval=NAME`, the `protocol` argument of `evaluate` and `run`)."""
    return config_names("eval")


def _check_choice(what: str, value: Any, valid: list[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise DDBenchError(f"unknown {what} {value!r}; valid names: {', '.join(valid)}.")
    return value


# ------------------------------------------------------------------------------------- configuration
@contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise a bad input the CLI reports in one line (Hydra's and OmegaConf's errors too) as DDBenchError with
    that line; other errors (faults of ddbench) pass unchanged."""
    try:
        yield
    except DDBenchError:
        raise
    except Exception as err:  # noqa: BLE001 - sorted into bad inputs and faults below
        from ddbench.cli.app import describe, is_user_error

        if is_user_error(err):
            raise DDBenchError(describe(err)) from err
        raise


def _quoted(key: str, value: str | Path) -> str:
    text = str(value)
    quote = "'" if "'" not in text else '"'
    return f"{key}={quote}{text}{quote}"


def with_overrides(arguments: dict[str, str], overrides: Sequence[str]) -> list[str]:
    """The overrides of the function's arguments (`arguments`: config key → the override) followed by the
    user's; a user's override of a key that an argument sets is refused (pass the argument instead)."""
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, (list, tuple)):
        raise DDBenchError(f"overrides must be a list of 'key=value' strings, got {type(overrides).__name__}; "
                           "e.g. overrides=['eval.epochs=300'].")
    owners = {"dataset.name": "dataset", **{key: key for key in arguments}}
    for override in overrides:
        if not isinstance(override, str) or ("=" not in override and not override.startswith("~")):
            raise DDBenchError(f"override {override!r} is not a 'key=value' string; "
                               "e.g. overrides=['eval.epochs=300'].")
        key = override.split("=", 1)[0].lstrip("+~")
        if key in owners:
            raise DDBenchError(f"overrides set {key!r}, which an argument of this function sets; pass it as the "
                               f"argument ({ARGUMENT_NAMES.get(owners[key], owners[key])}=...) instead.")
    return [*arguments.values(), *overrides]


# config key → the argument that sets it (for the message above)
ARGUMENT_NAMES = {"eval": "protocol", "paths.records": "records", "write_records": "records",
                  "eval.models": "models", "eval.num_seeds": "seeds", "eval.seed_base": "seeds"}


def compose_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved config of `ddbench.conf/config.yaml` with `overrides`, as the CLI makes it: installed
    packages' config folders on the search path, smoke settings applied and the overrides winning over them
    (`pipeline.resolved_config`). paths.output (the CLI's run folder) defaults to a scratch folder, created only
    if something is written there (the last good artifact of a diverged distillation)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ddbench import pipeline
    from ddbench.cli.app import with_plugin_search_path

    args = with_plugin_search_path(list(overrides))
    if not any(a.split("=", 1)[0].lstrip("+") == "paths.output" for a in args):
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        scratch = Path(tempfile.gettempdir()) / "ddbench-api" / run_id
        args.append(_quoted("paths.output", scratch))
    hydra = GlobalHydra.instance()
    outer = hydra.hydra if hydra.is_initialized() else None  # called from inside a Hydra app: put it back after
    hydra.clear()
    try:
        with user_errors(), initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
            return pipeline.resolved_config(compose(config_name="config", overrides=args), args)
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def apply_eval_arguments(cfg: dict[str, Any], models: list[str] | None, seeds: tuple[int, int] | None) -> list[str]:
    """Set eval.models, eval.seed_base and eval.num_seeds as command-line overrides would (after the smoke
    settings); returns the budget override it amounts to (eval.num_seeds, when it changes the protocol's count),
    for the records' `shortened`."""
    budget = []
    if models is not None:
        cfg["eval"]["models"] = list(models)
    if seeds is not None:
        base, count = seeds
        if base >= 0:
            cfg["eval"]["seed_base"] = base
        if count != cfg["eval"]["num_seeds"]:
            budget.append(f"eval.num_seeds={count}")
        cfg["eval"]["num_seeds"] = count
    return budget


def _models_argument(models: str | Sequence[str] | None) -> list[str] | None:
    if models is None:
        return None
    listed = [models] if isinstance(models, str) else list(models) if isinstance(models, (list, tuple)) else None
    if not listed or not all(isinstance(m, str) and m for m in listed):
        raise DDBenchError(f"models must be a model name or a non-empty list of them, got {models!r:.60}; e.g. "
                           "models=['convnet', 'alexnet'] (see ddbench.list_models()).")
    return listed


def _eval_arguments(dataset: str, protocol: str, device: Any, records: str | Path | None,
                    models: list[str] | None, seeds: Any) -> dict[str, str]:
    _check_choice("dataset", dataset, list_datasets())
    _check_choice("protocol", protocol, list_protocols())
    arguments = {"dataset": f"dataset={dataset}", "eval": f"eval={protocol}", "device": _quoted("device", device),
                 "write_records": f"write_records={'false' if records is None else 'true'}"}
    if records is not None:
        arguments["paths.records"] = _quoted("paths.records", Path(records).expanduser())
    if models is not None:
        arguments["eval.models"] = ""  # set after composing (apply_eval_arguments); listed so overrides can't
    if seeds is not None:
        arguments["eval.num_seeds"] = arguments["eval.seed_base"] = ""
    return arguments


def _overrides_of(arguments: dict[str, str], overrides: Sequence[str]) -> list[str]:
    return [o for o in with_overrides(arguments, overrides) if o]


def _reject_helper(cfg: dict[str, Any]) -> None:
    if cfg.get("helper"):
        raise DDBenchError("helper=true shares the training runs of another ddbench-run process; start it from the "
                           "command line (ddbench-run ... helper=true), not from Python.")


def _describe_call(function: str, **arguments: Any) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items() if v not in (None, (), []))
    return f"ddbench.{function}({shown})"


# ------------------------------------------------------------------------------------------ the API
def load_artifact(path: str | Path, dataset: str | None = None) -> "Artifact":
    """A ddbench artifact folder, a reference-format folder (images_best.pt, labels_best.pt, lr_best.pt; needs
    `dataset`) or an ImageFolder (needs `dataset`). Nothing is unpickled: safetensors/JSON, weights-only tensor
    files or image files only. Images [N,C,H,W] in the dataset's normalized (or ZCA) space, class-major."""
    from ddbench.artifact import load_artifact as load

    return load(path, dataset=dataset)


def leaderboard(records: str | Path = "leaderboard/records", include_shortened: bool = False) -> "pd.DataFrame":
    """The leaderboard frame the Markdown/HTML renderers use: one row per (dataset, protocol, label_type, method,
    ipc, eval_model) with mean/std (fractions) over the pooled seeds, timings and scores (see
    ddbench.records.leaderboard.COLUMNS). Shortened runs (smoke=true, cut budgets) only with include_shortened."""
    from ddbench.records import leaderboard_frame, read_records

    return leaderboard_frame(read_records(records), include_shortened=include_shortened)


def distill(method: str, dataset: str, ipc: int, seed: int = 0, overrides: Sequence[str] = (),
            device: str = "auto") -> "Artifact":
    """Distill `ipc` images per class of `dataset` with `method`, as `ddbench-distill method=... dataset=...
    ipc=... seed=...` would, and return the artifact in memory (save it with `.save(dir)`): images [ipc*K,C,H,W]
    class-major in the dataset's normalized (or ZCA) space, labels [ipc*K] int64 or [ipc*K,K] float logits,
    optional learned lr, and meta (config, seed, distill_seconds, ...)."""
    from ddbench import jobs

    with user_errors():
        _check_choice("method", method, list_methods())
        _check_choice("dataset", dataset, list_datasets())
        arguments = {"method": f"method={method}", "dataset": f"dataset={dataset}", "ipc": f"ipc={ipc}",
                     "seed": f"seed={seed}", "device": _quoted("device", device)}
        cfg = compose_config(_overrides_of(arguments, overrides))
        _reject_helper(cfg)
        return jobs.distill_job(jobs.prepare(cfg, "distill")).artifact


def evaluate(
    images: "torch.Tensor",
    labels: "torch.Tensor",
    dataset: str = "cifar10",
    protocol: str = "dc",
    models: str | Sequence[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    normalized: bool = False,
    learned_lr: "float | torch.Tensor | None" = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
    records: str | Path | None = None,
    *,
    method: str = "custom",
) -> EvalReport:
    """Evaluate your own synthetic set under a protocol, as `ddbench-eval` would (same seeds, same caches).

    images: [N,C,H,W] float, raw pixels in [0,1] (normalized here with the dataset's mean/std, or its ZCA with
    overrides=["dataset.zca=true"]), or already in that space with normalized=True (e.g. an artifact's images).
    labels: [N] int class indices (hard) or [N,K] float logits (soft). models: eval.models (default: the
    protocol's); seeds: a count or consecutive seeds ([3, 4, 5]), i.e. eval.num_seeds and eval.seed_base;
    learned_lr: the set's learned lr (used when the protocol allows it). records=DIR also writes one record per
    model there, marked `source: api` with the images' content hash, under the name `method`.
    Everything is checked before data loads; a bad input raises DDBenchError naming the fix.
    """
    from ddbench import jobs
    from ddbench.api_inputs import as_tensor, check_images, check_labels, check_lr, expected_for, seeds_setting

    with user_errors():
        if not isinstance(normalized, bool):
            raise DDBenchError(f"normalized must be True or False, got {normalized!r}.")
        if not isinstance(method, str) or not method.strip():
            raise DDBenchError(f"method must be a non-empty name for the records, got {method!r}; e.g. method='mine'.")
        wanted_models, wanted_seeds, lr = _models_argument(models), seeds_setting(seeds), check_lr(learned_lr)
        images_t, labels_t = as_tensor(images, "images"), as_tensor(labels, "labels")
        arguments = _eval_arguments(dataset, protocol, device, records, wanted_models, seeds)
        given = _overrides_of(arguments, overrides)
        cfg = compose_config(given)
        budget = apply_eval_arguments(cfg, wanted_models, wanted_seeds)
        expected = expected_for(cfg)
        if expected is not None:  # imagefolder: checked once the folder is read
            images_t = check_images(images_t, expected, normalized)
            labels_t = check_labels(labels_t, len(images_t), expected)
        job = jobs.prepare(cfg, "eval")
        artifact = _artifact_of(images_t, labels_t, lr, job.splits, normalized, method)
        marks = _marks(artifact)
        command = _describe_call("evaluate", dataset=dataset, protocol=protocol, models=wanted_models, seeds=seeds,
                                 normalized=normalized, overrides=list(overrides), method=method)
        evaluated = jobs.evaluate_job(job, artifact, command=command, overrides=[*overrides, *budget], extra=marks,
                                      record_config=lambda done: _record_config(done, artifact),
                                      write=records is not None)
        return _report(job.cfg, artifact, evaluated.results, marks, evaluated.records)


def run(method: str, dataset: str, ipc: int, seed: int = 0, protocol: str = "dc",
        models: str | Sequence[str] | None = None, seeds: int | Sequence[int] | None = None,
        overrides: Sequence[str] = (), device: str = "auto", records: str | Path | None = None,
        artifact_dir: str | Path | None = None) -> RunResult:
    """Distill, then evaluate, as `ddbench-run method=... dataset=... ipc=... seed=... eval=...` does; returns
    the artifact (saved to `artifact_dir` when given) and the EvalReport (`artifact, report = ddbench.run(...)`).
    records=DIR writes one record per evaluated model there, marked `source: api`."""
    from ddbench import jobs
    from ddbench.api_inputs import seeds_setting

    with user_errors():
        _check_choice("method", method, list_methods())
        wanted_models, wanted_seeds = _models_argument(models), seeds_setting(seeds)
        arguments = {"method": f"method={method}", "ipc": f"ipc={ipc}", "seed": f"seed={seed}",
                     **_eval_arguments(dataset, protocol, device, records, wanted_models, seeds)}
        cfg = compose_config(_overrides_of(arguments, overrides))
        budget = apply_eval_arguments(cfg, wanted_models, wanted_seeds)
        _reject_helper(cfg)
        job = jobs.prepare(cfg, "run")
        command = _describe_call("run", method=method, dataset=dataset, ipc=ipc, seed=seed, protocol=protocol,
                                 models=wanted_models, seeds=seeds, overrides=list(overrides))
        marks: dict[str, Any] = {}  # the records' marks, of the set once it is distilled (before it is evaluated)
        ran = jobs.run_job(job, artifact_dir=None if artifact_dir is None else Path(artifact_dir).expanduser(),
                           command=command, overrides=[*overrides, *budget], extra=marks, write=records is not None,
                           on_distilled=lambda distilled: marks.update(_marks(distilled.artifact)))
        report = _report(job.cfg, ran.artifact, ran.results, marks, ran.records)
    return RunResult(ran.artifact, report, ran.distilled.seconds, ran.distilled.path)


# ------------------------------------------------------------------------------------------ helpers
def _artifact_of(images: "torch.Tensor", labels: "torch.Tensor", lr: "torch.Tensor | None", splits: "Splits",
                 normalized: bool, method: str) -> "Artifact":
    """The user's set as an in-memory artifact of the loaded dataset (images [N,C,H,W] in its model space)."""
    from ddbench.api_inputs import check_images, check_labels, expected_of, to_model_space
    from ddbench.artifact import Artifact

    expected = expected_of(splits)
    images = check_images(images, expected, normalized)  # again: an imagefolder's shape is known only now
    labels = check_labels(labels, len(images), expected)
    if not normalized:
        images = to_model_space(images, splits)
    info = splits.info
    normalization: dict[str, Any] = (
        {"kind": "zca", "eps": splits.zca.eps, "fitted_on": "train"} if splits.zca is not None
        else {"kind": "meanstd", "mean": list(info.mean), "std": list(info.std)})
    meta = {"dataset": info.name, "num_classes": info.num_classes, "image_shape": list(info.shape),
            "normalization": normalization, "ipc": max(1, len(images) // info.num_classes), "method": method,
            "config": {}, "seed": None, "source": SOURCE}
    extras = splits.zca.tensors() if splits.zca is not None else {}
    return Artifact(images.float(), labels, meta, lr, {k: v.cpu() for k, v in extras.items()})


def _marks(artifact: "Artifact") -> dict[str, str]:
    """The fields that mark the API's records: `source` and the content hash of the images trained on."""
    from ddbench.pipeline import images_digest

    return {"source": SOURCE, "images_digest": images_digest(artifact)}


def _report(cfg: dict[str, Any], artifact: "Artifact", results: list["EvalResult"], marks: dict[str, str],
            records: list[Path]) -> EvalReport:
    label_type = results[0].label_type if results else artifact.label_type
    return EvalReport(cfg["dataset"]["name"], cfg["eval"]["name"], int(artifact.ipc), label_type, results, cfg,
                      marks["images_digest"], records)


def _record_config(cfg: dict[str, Any], artifact: "Artifact") -> dict[str, Any]:
    """evaluate()'s config for its records: the evaluation's settings, with the set named by its method and
    content hash instead of a distillation config."""
    out = {k: v for k, v in cfg.items() if k not in DISTILL_ONLY_KEYS}
    out["method"] = {"name": artifact.meta["method"], "source": SOURCE}
    out["ipc"] = int(artifact.ipc)
    return out
