"""Up-front checks of a run's config: everything that can be checked before data is loaded or work starts.

Each check raises a DDBenchError naming the key, the bad value and a valid one. Method options are checked by
the method's own options; the evaluation protocol by `EvalProtocol.from_dict`; every model's options (the model
block, a method's model_overrides and teacher blocks, eval.model_kwargs) by the options the model declares
(ddbench.models.options).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ddbench.utils import DDBenchError, resolve_device

STAGES = ("run", "distill", "eval", "experts")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(key: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    """`key` must be an int (>= minimum); None passes when optional."""
    if optional and value is None:
        return
    bound = "" if minimum is None else f" >= {minimum}"
    if not is_int(value) or (minimum is not None and value < minimum):
        example = minimum if minimum is not None else 1
        raise DDBenchError(f"{key} must be an int{bound}, got {value!r}; e.g. {key}={example}.")


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise DDBenchError(f"{key} must be true or false, got {value!r}; e.g. {key}=true.")


def check_config(cfg: dict[str, Any], stage: str) -> None:
    """Everything about the run checkable without data: types, ranges, names, devices and writable folders."""
    assert stage in STAGES, stage
    check_int("seed", cfg.get("seed"), minimum=0)
    for key in ("smoke", "smoke_wins", "progress", "write_records", "debug", "helper", "reuse_distilled"):
        if key in cfg:
            check_bool(key, cfg[key])
    if cfg.get("helper") and (stage != "run" or not cfg.get("reuse_distilled")):
        raise DDBenchError("helper=true shares the evaluation of a ddbench-run started with the same command, so it "
                           "needs ddbench-run and reuse_distilled=true (the helper takes the set that run distills "
                           "from the cache); add reuse_distilled=true to both commands.")
    resolve_device(cfg.get("device", "auto"))
    info = check_dataset(cfg["dataset"])
    shape = image_shape(cfg["dataset"], info)
    check_model_name(cfg["model"].get("name"), "model.name")
    check_model_block(cfg["model"], shape)
    if stage in ("run", "distill"):
        check_ipc(cfg.get("ipc"), info, cfg["dataset"])
    if stage in ("run", "distill", "experts"):
        check_method_models(cfg.get("method") or {}, cfg["model"], shape)
    if stage in ("run", "eval"):
        check_eval(cfg["eval"], shape)
    paths = cfg.get("paths") or {}
    if paths.get("cache"):
        check_writable(paths["cache"], "paths.cache")
    else:
        from ddbench.cache import default_cache_root

        check_writable(default_cache_root(), "paths.cache")
    if stage in ("run", "eval") and cfg.get("write_records", True):
        check_writable(paths.get("records") or "leaderboard/records", "paths.records")


def check_dataset(data: dict[str, Any]) -> Any:
    """The dataset's DatasetInfo (None for imagefolder, known only after reading the folder); options checked."""
    from ddbench.data.registry import dataset_info

    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise DDBenchError(f"dataset.name must be a dataset name, got {name!r}; e.g. dataset=digits.")
    for key in ("max_train_per_class", "max_test_per_class", "image_size"):
        check_int(f"dataset.{key}", data.get(key), minimum=1, optional=True)
    for key in ("zca", "download"):
        if key in data:
            check_bool(f"dataset.{key}", data[key])
    if data.get("mirror_safe") is not None:
        check_bool("dataset.mirror_safe", data["mirror_safe"])
    check_bool("dataset.skip_bad_files", data.get("skip_bad_files", False))
    eps = data.get("zca_eps", 0.1)
    if not _is_number(eps) or not eps > 0:
        raise DDBenchError(f"dataset.zca_eps must be a number > 0, got {eps!r}; e.g. dataset.zca_eps=0.1.")
    return None if name == "imagefolder" else dataset_info(name)


def check_ipc(ipc: Any, info: Any, data: dict[str, Any]) -> None:
    """ipc: an int >= 1 and at most the smallest class of the (possibly truncated) train split, when known."""
    check_int("ipc", ipc, minimum=1)
    bounds = []
    if info is not None and info.train_min_per_class:
        bounds.append((info.train_min_per_class, f"the smallest class of {info.name} has {info.train_min_per_class} "
                                                 "training images"))
    if data.get("max_train_per_class"):
        limit = data["max_train_per_class"]
        bounds.append((limit, f"dataset.max_train_per_class={limit} (smoke=true sets 50)"))
    for bound, why in bounds:
        if ipc > bound:
            raise DDBenchError(f"ipc={ipc} is more images per class than the data has: {why}; use ipc <= {bound}.")


def check_ipc_fits(ipc: int, counts: list[int], dataset: str) -> None:
    """After loading: ipc against the real per-class counts (for datasets whose sizes are not known before)."""
    smallest = min(counts)
    if ipc > smallest:
        cls = counts.index(smallest)
        raise DDBenchError(f"ipc={ipc} is more images per class than the data has: class {cls} of {dataset} has "
                           f"{smallest} training images; use ipc <= {smallest}.")


def check_model_name(name: Any, key: str) -> None:
    """A registered model, or timm:<name> of a model timm knows (timm.is_model: nothing is downloaded)."""
    from ddbench.models import check_model_options, list_models

    if isinstance(name, str) and name.lower().startswith("timm:") and len(name) > 5:
        check_model_options(name, None, where=key)
        return
    if not isinstance(name, str) or name.lower() not in list_models():
        raise DDBenchError(f"unknown {key} {name!r}; valid names: {', '.join(list_models())}, or timm:<name>.")


def image_shape(data: dict[str, Any], info: Any) -> tuple[int, int] | None:
    """(channels, image_size) the models will see, when known before loading (not for imagefolder)."""
    if info is None:
        return None
    return info.channels, int(data.get("image_size") or info.image_size)


def _options_block(value: Any, key: str, example: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DDBenchError(f"{key} must be a mapping of model options, got {value!r}; e.g. {example}.")
    return value


def check_model_block(model: dict[str, Any], shape: tuple[int, int] | None) -> None:
    """The run's `model` block (the distillation network, the experts of trajectory methods): its options."""
    from ddbench.models import check_model_options

    check_model_options(model["name"], {k: v for k, v in model.items() if k != "name"}, "model", shape)


def check_method_models(method: dict[str, Any], model: dict[str, Any], shape: tuple[int, int] | None) -> None:
    """The networks a method builds besides the model block: its `model_overrides` (the experts and student of
    trajectory methods: the model block updated by them) and the models of its teacher / embedding block."""
    from ddbench.models import check_model_options

    overrides = _options_block(method.get("model_overrides"), "method.model_overrides",
                               "method.model_overrides={width:64}")
    if overrides:
        merged = {**model, **overrides}
        name = merged.pop("name")
        check_model_name(name, "method.model_overrides.name")
        check_model_options(name, {k: v for k, v in overrides.items() if k != "name"}, "method.model_overrides")
        check_model_options(name, {k: v for k, v in model.items() if k not in overrides and k != "name"}, "model")
        check_model_options(name, merged, "model", shape)
    for block in ("teacher", "embedding"):  # CDA/INFER's teachers, DQ's embedding network (TeacherConfig fields)
        if isinstance(method.get(block), dict):
            check_models_and_kwargs(method[block], f"method.{block}", shape)


def check_models_and_kwargs(block: dict[str, Any], where: str, shape: tuple[int, int] | None) -> None:
    """A TeacherConfig-like block: `models` (a name, a list, or 'auto') and `model_kwargs` {name: {option: value}},
    each entry's options checked against its model's declared ones."""
    from ddbench.models import check_model_options

    models = block.get("models")
    names = [models] if isinstance(models, str) and models != "auto" else models  # other types: the block's check
    for name in names if isinstance(names, (list, tuple)) else []:
        check_model_name(name, f"{where}.models entry")
    kwargs = _options_block(block.get("model_kwargs"), f"{where}.model_kwargs",
                            f"{where}.model_kwargs={{convnet:{{width:32}}}}")
    for name, options in kwargs.items():
        check_model_name(name, f"{where}.model_kwargs key")
        key = f"{where}.model_kwargs.{name}"
        check_model_options(name, _options_block(options, key, f"{key}={{width:32}}"), key, shape)


def check_eval(eval_cfg: dict[str, Any], shape: tuple[int, int] | None = None) -> None:
    """The protocol's options (EvalProtocol checks names, types and ranges), its model names and the options in
    eval.model_kwargs and eval.teacher.model_kwargs."""
    from ddbench.evaluation import EvalProtocol

    models = eval_cfg.get("models")
    if not isinstance(models, list) or not models:
        raise DDBenchError(f"eval.models must be a non-empty list of model names, got {models!r}; "
                           "e.g. eval.models=[convnet].")
    for name in models:
        check_model_name(name, "eval.models entry")
    check_models_and_kwargs({"model_kwargs": eval_cfg.get("model_kwargs")}, "eval", shape)
    teacher = eval_cfg.get("teacher")
    if isinstance(teacher, dict):
        check_models_and_kwargs(teacher, "eval.teacher", shape)
    EvalProtocol.from_dict(eval_cfg)


def check_writable(path: str | Path, key: str) -> None:
    """`path` is (or can be created as) a folder this process can write into; probed with a temporary file."""
    target = Path(path).expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise DDBenchError(f"{key}={path} cannot be a folder: {probe} is a file; point {key} at a folder.")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".ddbench-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise DDBenchError(f"{key}={path} is not writable ({err.strerror or type(err).__name__} in {probe}); "
                           f"point {key} at a folder you can write to.") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
