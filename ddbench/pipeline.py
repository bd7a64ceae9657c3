"""The stages behind the CLI and the API: load data, distill, evaluate, write records.

They read the resolved config by key; `ddbench.jobs` composes them into the typed entry points (prepare, then
distill_job / evaluate_job / run_job / reference_job) that the ddbench-* commands and `ddbench.api` call."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ddbench.artifact import Artifact, save_artifact
from ddbench.artifact.store import read_artifact_dir
from ddbench.cache import Cache
from ddbench.checks import check_ipc_fits
from ddbench.data import Splits, load_dataset
from ddbench.evaluation import EvalProtocol, EvalResult, ReferenceResult, evaluate_synthetic, reference_results
from ddbench.methods import DistillResult, MethodOptions, create_method
from ddbench.methods import method_options as resolve_method_options
from ddbench.methods.base import DistillDiverged
from ddbench.methods.options import RUN_CONTROL_OPTIONS
from ddbench.records import make_record, write_record
from ddbench.utils import (
    DDBenchError, code_fingerprint, device_name, mean_std, peak_memory_bytes, peak_rss_bytes, resolve_device,
    seed_everything, stable_hash, tensor_digest,
)

log = logging.getLogger("ddbench")


def resolved_config(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The run's config as a plain dict with smoke settings applied (what records and artifacts store).

    Keys the user set on the command line (`overrides`, default: Hydra's task overrides) win over smoke settings,
    unless smoke_wins=true (a board rehearsal): then the smoke settings win over the keys they set (budgets such as
    method.iterations or eval.epochs), except SMOKE_KEEPS, and the user's other keys still apply.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    if plain.get("smoke"):
        reductions = {"dataset": dict(plain["smoke_settings"]["dataset"]), "eval": {}, "method": {}}
        _deep_update(reductions["eval"], plain["smoke_settings"]["eval"])
        _deep_update(reductions["eval"], plain["eval"].get("smoke") or {})  # the protocol's own reductions
        _deep_update(reductions["method"], plain["method"].get("smoke") or {})
        for group, changes in reductions.items():
            _deep_update(plain[group], changes)
        reduced = set(_dotted_keys(reductions)) if plain.get("smoke_wins") else set()
        for key in _user_set_keys(overrides):
            if key not in SMOKE_KEEPS and any(key == r or key.startswith(r + ".") or r.startswith(key + ".")
                                              for r in reduced):
                continue
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            _set_path(plain, key.split("."), value)
    return plain


# smoke_wins=true: keys of smoke settings a command's own value keeps (what a board cell evaluates on)
SMOKE_KEEPS = ("eval.models", "eval.model_kwargs")


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The leaf keys of a nested dict, dotted ({'eval': {'epochs': 10}} → ['eval.epochs'])."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out += _dotted_keys(value, name + ".") if isinstance(value, dict) and value else [name]
    return out


def _user_set_keys(overrides: list[str] | None) -> list[str]:
    """Dotted keys inside dataset/eval/method that the command line set (e.g. `eval.epochs=30`)."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    return [k for k in keys if "." in k and k.split(".", 1)[0] in ("dataset", "eval", "method")]


# Command-line keys that cut a protocol's or a dataset's budget: a run that sets any of them is "shortened", and
# its records stay off the default leaderboard.
BUDGET_KEYS = (
    "eval.epochs", "eval.epochs_no_aug", "eval.num_seeds", "eval.teacher.epochs", "eval.full_data",
    "eval.full_data.epochs", "dataset.max_train_per_class", "dataset.max_test_per_class",
)


def shortened_settings(cfg: dict[str, Any], overrides: list[str] | None = None) -> str | None:
    """What cut this run's budget (`smoke=true`, `eval.epochs=30`, ...), or None for a full-protocol run."""
    cuts = ["smoke=true"] if cfg.get("smoke") else []
    declared = (cfg.get("board") or {}).get("num_seeds")
    for key in _user_set_keys(overrides):
        if key == "eval.num_seeds" and declared is not None and declared == (cfg.get("eval") or {}).get("num_seeds"):
            continue  # a board's cross-architecture cells with the seed count the board states beside its table
        if key in BUDGET_KEYS:
            value = key.split(".")
            found: Any = cfg
            for part in value:
                found = found.get(part) if isinstance(found, dict) else None
            cuts.append(f"{key}={found}")
    return ", ".join(cuts) or None


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _deep_update(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Merge `changes` into `target`, recursing into nested dicts (a smoke block may change one nested key)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def pick_device(cfg: dict[str, Any]) -> torch.device:
    """The configured device; in a multirun on a machine with several GPUs, job n takes GPU n mod count."""
    device = resolve_device(cfg["device"])
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        try:
            from hydra.core.hydra_config import HydraConfig

            job_num = HydraConfig.get().job.num or 0
        except (ValueError, AttributeError):
            job_num = 0
        device = torch.device("cuda", job_num % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def load_splits(cfg: dict[str, Any], device: torch.device) -> Splits:
    data = cfg["dataset"]
    return load_dataset(
        data["name"], root=data.get("root"), device=device, zca=data.get("zca", False), zca_eps=data.get("zca_eps", 0.1),
        download=data.get("download", False), max_train_per_class=data.get("max_train_per_class"),
        max_test_per_class=data.get("max_test_per_class"), image_size=data.get("image_size"),
        mirror_safe=data.get("mirror_safe"), skip_bad_files=data.get("skip_bad_files", False),
        cache=cfg.get("paths", {}).get("cache"),
    )


def method_options(cfg: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in cfg["method"].items() if k not in ("name", "smoke")}
    options.setdefault("progress", cfg.get("progress", False))
    return options


def check_method(cfg: dict[str, Any]) -> MethodOptions:
    """The run's method options, validated (unknown method, unknown keys, bad values) before any data loads."""
    return resolve_method_options(cfg["method"]["name"], method_options(cfg))


def distill(cfg: dict[str, Any], splits: Splits, device: torch.device, cached_only: bool = False
            ) -> tuple[Artifact, float]:
    """Run the configured method; returns the artifact (not yet saved) and the wall time in seconds (with the time
    of earlier, interrupted parts when the method resumed from a checkpoint).

    With `reuse_distilled=true`, a set distilled earlier with the same distillation settings and code (see
    `distill_key`) is taken from the cache (kind "distilled") instead, with the seconds its distillation took, and
    a new one is stored there; concurrent runs with the same key distill it once. cached_only: never distill
    (a helper's use: wait for the run that distills, then take its set, or fail)."""
    check_ipc_fits(int(cfg["ipc"]), splits.train.counts.tolist(), splits.info.name)
    if not cfg.get("reuse_distilled"):
        return _distill(cfg, splits, device)
    key = distill_key(cfg, device)
    cache = Cache(cfg["paths"]["cache"])
    folder = cache.folder("distilled", key)
    with cache.building("distilled", key):
        found = _cached_distilled(cache, folder, cfg)
        if found is not None:
            return found, float(found.meta.get("distill_seconds") or 0.0)
        if cached_only:
            raise DDBenchError(f"no distilled set with this run's settings is in the cache ({folder}): the run this "
                               "helper shares distills it, so start that run (the same command without helper=true) "
                               "too, or check that it did not fail.")
        artifact, seconds = _distill(cfg, splits, device)
        save_artifact(artifact, folder)
        log.info("stored the distilled set in %s for runs with the same distillation settings", folder)
    return artifact, seconds


# Top-level config keys that do not change what a method distills: runs that differ only in them share a set.
NOT_DISTILL_KEYS = ("eval", "paths", "logger", "board", "progress", "debug", "write_records", "artifact",
                    "reuse_distilled", "smoke_settings", "smoke_wins", "device", "helper")


def distill_key(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """What a distilled set depends on: the resolved config without the evaluation and bookkeeping keys (smoke
    reductions are already applied to it), the kind of device, the torch version and ddbench's code (a hash of its
    source files, so any change to them, committed or not, distills again)."""
    settings = {k: v for k, v in cfg.items() if k not in NOT_DISTILL_KEYS}
    settings["method"] = {k: v for k, v in cfg["method"].items() if k not in RUN_CONTROL_OPTIONS}
    return {"what": "distilled", "settings": settings, "device": device.type, "code": code_fingerprint(),
            "torch": torch.__version__}


def _cached_distilled(cache: Cache, folder: Path, cfg: dict[str, Any]) -> Artifact | None:
    """The distilled set stored in `folder` (its config replaced by this run's), or None; an unreadable one is
    moved aside (named in a warning) so that it is distilled again."""
    if not folder.is_dir():
        return None
    try:
        artifact = read_artifact_dir(folder)
    except DDBenchError as err:
        cache.set_aside(folder, "distilled set", " ".join(str(err).split())[:160])
        return None
    log.info("reusing the distilled set %s (distilled in %.1f s by an earlier run with the same settings)",
             folder, float(artifact.meta.get("distill_seconds") or 0.0))
    artifact.meta.update(config=cfg, reused_from=str(folder))
    return artifact


def _distill(cfg: dict[str, Any], splits: Splits, device: torch.device) -> tuple[Artifact, float]:
    seed_everything(cfg["seed"])
    method = create_method(
        cfg["method"]["name"], splits=splits, ipc=int(cfg["ipc"]), seed=int(cfg["seed"]), device=device,
        options=check_method(cfg), model=cfg["model"], augment=cfg["augment"], cache=Cache(cfg["paths"]["cache"]),
    )
    start = time.perf_counter()
    try:
        result = method.distill()
    except DistillDiverged as err:
        if err.result is None:
            raise
        partial = _artifact(cfg, splits, err.result, time.perf_counter() - start)
        path = save_artifact(partial, Path(cfg["paths"]["output"]) / "artifact_last_good")
        raise DDBenchError(f"{err} Last good artifact: {path}") from err
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start + float(result.meta.get("resumed_seconds") or 0.0)
    return _artifact(cfg, splits, result, seconds), seconds


def _artifact(cfg: dict[str, Any], splits: Splits, result: DistillResult, seconds: float) -> Artifact:
    info = splits.info
    normalization: dict[str, Any] = (
        {"kind": "zca", "eps": splits.zca.eps, "fitted_on": "train"} if splits.zca is not None
        else {"kind": "meanstd", "mean": list(info.mean), "std": list(info.std)}
    )
    extras = dict(result.extras)
    if splits.zca is not None:
        extras.update(splits.zca.tensors())
    meta = {
        "dataset": info.name, "num_classes": info.num_classes, "image_shape": list(info.shape),
        "normalization": normalization, "ipc": int(cfg["ipc"]), "method": cfg["method"]["name"],
        "config": cfg, "seed": int(cfg["seed"]), "distill_seconds": seconds, **result.meta,
    }
    return Artifact(result.images.detach().float().cpu(), result.labels.detach().cpu(), meta,
                    None if result.lr is None else result.lr.detach().float().cpu(), extras)


def evaluate(cfg: dict[str, Any], artifact: Artifact, splits: Splits) -> list[EvalResult]:
    if artifact.num_classes != splits.info.num_classes or list(artifact.images.shape[1:]) != list(splits.info.shape):
        raise DDBenchError(
            f"the artifact holds {artifact.num_classes} classes of shape {list(artifact.images.shape[1:])}, but dataset "
            f"{splits.info.name} has {splits.info.num_classes} classes of shape {list(splits.info.shape)}; "
            "evaluate it with the dataset it was distilled from (dataset=...)."
        )
    from ddbench.evaluation.derive import eval_config_for_artifact

    cfg["eval"] = eval_config_for_artifact(cfg["eval"], artifact.meta)  # eval=infer_dyn: the artifact's teachers
    protocol = EvalProtocol.from_dict(cfg["eval"])
    images, labels = artifact.training_set()  # a factorized artifact is materialised here
    return evaluate_synthetic(images, labels, splits, protocol, artifact.lr, progress=cfg.get("progress", False),
                              cache=Cache(cfg["paths"]["cache"]), ipc=int(artifact.ipc))


def help_evaluate(cfg: dict[str, Any], splits: Splits, device: torch.device) -> None:
    """helper=true: share the training runs of a run started with the same command (without helper=true), which
    distills the set and writes the records. The helper first trains the score baselines that do not need the set,
    then waits for the set in the cache and trains the evaluation runs nobody is running yet, last first; the main
    run takes their results from the cache. It writes no artifact and no record."""
    from ddbench.evaluation.evaluate import Evaluator

    evaluator = Evaluator(splits, EvalProtocol.from_dict(cfg["eval"]), Cache(cfg["paths"]["cache"]),
                          cfg.get("progress", False), helper=True)
    evaluator.help_baselines(int(cfg["ipc"]))
    artifact, _ = distill(cfg, splits, device, cached_only=True)  # waits while the main run distills it
    images, labels = artifact.training_set()
    evaluator.help(images.to(device), labels.to(device), artifact.lr, int(artifact.ipc))


def images_digest(artifact: Artifact) -> str:
    """The content hash of the images an evaluation trains on (a factorised set decoded), as records store it."""
    images, _ = artifact.training_set()
    return tensor_digest(images)


def write_results(
    cfg: dict[str, Any], artifact: Artifact, artifact_path: Path | None, results: list[EvalResult],
    distill_seconds: float | None, device: torch.device, command: str | None = None, distill_reused: bool = False,
    overrides: list[str] | None = None, extra: dict[str, Any] | None = None,
) -> list[Path]:
    """One record per evaluated architecture under paths.records; `distill_reused`: the set was distilled by an
    earlier run (`distill_seconds` are that run's). `overrides`: the keys the caller set, which decide `shortened`
    (default: Hydra's task overrides; the Python API passes its own); `extra`: more (optional) record fields, e.g.
    the API's `source` and `images_digest`."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    # records of one set on several architectures (a board's cross-architecture cells) can be checked to name the
    # same images
    extra = {"images_digest": images_digest(artifact), **(extra or {})}
    paths = []
    for result in results:
        record = make_record(
            run_id=run_id, method=artifact.meta.get("method", cfg["method"]["name"]), dataset=cfg["dataset"]["name"],
            ipc=int(artifact.ipc), label_type=result.label_type, protocol=cfg["eval"]["name"], eval_model=result.model,
            accuracies=result.accuracies, seeds=result.seeds, distill_seconds=distill_seconds,
            eval_seconds=result.seconds, score_seconds=float(result.score_seconds),
            peak_gpu_memory_bytes=peak_memory_bytes(device), peak_cpu_memory_bytes=peak_rss_bytes(),
            device=device_name(device), config_hash=stable_hash(cfg), config=cfg, seed=int(cfg["seed"]),
            artifact=None if artifact_path is None else str(artifact_path), command=command, scores=dict(result.scores),
            shortened=shortened_settings(cfg, overrides), distill_reused=distill_reused, teacher=result.teacher,
            eval_batch_size=result.batch_size, **extra,
        )
        paths.append(write_record(record, cfg["paths"]["records"]))
    return paths


REFERENCE_METHODS = {"whole_dataset": "whole dataset", "teacher": "teacher"}  # reference kind → the row's name


def references(cfg: dict[str, Any], splits: Splits) -> list[ReferenceResult]:
    """The protocol's reference rows on this data (whole dataset per evaluation model; its teacher, if any)."""
    return reference_results(splits, EvalProtocol.from_dict(cfg["eval"]), Cache(cfg["paths"]["cache"]),
                             progress=cfg.get("progress", False))


def write_references(cfg: dict[str, Any], results: list[ReferenceResult], device: torch.device,
                     command: str | None = None) -> list[Path]:
    """One record per reference row: method 'whole dataset' or 'teacher', `reference` set, no ipc or artifact."""
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    paths = []
    for result in results:
        record = make_record(
            run_id=run_id, method=REFERENCE_METHODS[result.kind], dataset=cfg["dataset"]["name"], ipc=None,
            label_type="hard", protocol=cfg["eval"]["name"], eval_model=result.model, accuracies=result.accuracies,
            seeds=result.seeds, distill_seconds=None, eval_seconds=result.seconds,
            peak_gpu_memory_bytes=peak_memory_bytes(device), peak_cpu_memory_bytes=peak_rss_bytes(),
            device=device_name(device), config_hash=stable_hash(cfg), config=cfg, seed=int(cfg["seed"]),
            artifact=None, command=command, shortened=shortened_settings(cfg), teacher=result.teacher,
            reference=result.kind,
        )
        paths.append(write_record(record, cfg["paths"]["records"]))
    return paths


def reference_rows(cfg: dict[str, Any], results: list[ReferenceResult]) -> str:
    return "\n".join(
        f"{REFERENCE_METHODS[r.kind]} | {cfg['dataset']['name']} | {cfg['eval']['name']} | {r.model} | "
        f"{100 * mean_std(r.accuracies)[0]:.2f} ± {100 * mean_std(r.accuracies)[1]:.2f} % ({len(r.accuracies)} "
        f"{'seeds' if len(r.accuracies) > 1 else 'value'}, {r.seconds:.1f} s)" for r in results)


def summary_rows(cfg: dict[str, Any], artifact: Artifact, results: list[EvalResult]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"{artifact.meta.get('method', cfg['method']['name'])} | {cfg['dataset']['name']} | ipc {artifact.ipc} | "
            f"{cfg['eval']['name']} | {r.model} | {r.label_type} labels | {100 * r.mean:.2f} ± {100 * r.std:.2f} % "
            f"({len(r.accuracies)} seeds, {r.seconds:.1f} s)"
        )
    return "\n".join(lines)
