"""The Hydra configs and the CLI helpers, in-process: every config file composes, smoke settings, quickstart."""

from __future__ import annotations

import importlib.resources
import re

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import ddbench.data.sources as sources
from ddbench import pipeline
from ddbench.cli.run import wants_quickstart
from ddbench.data import list_datasets
from ddbench.evaluation import EvalProtocol
from ddbench.methods import list_methods
from ddbench.models import list_models
from ddbench.utils import DDBenchError



CONFIG_GROUPS = ("dataset", "model", "method", "eval", "augment", "logger", "experiment")


def config_files(group: str) -> list[str]:
    folder = importlib.resources.files("ddbench.conf") / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@pytest.fixture(scope="module")
def hydra_compose():
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        def composed(*overrides: str, hydra_config: bool = False):
            extra = [] if hydra_config else ["paths.output=/tmp/ddbench-compose-test"]
            return compose(config_name="config", overrides=[*overrides, *extra], return_hydra_config=hydra_config)

        yield composed


def test_config_groups_hold_the_expected_files():
    for group in CONFIG_GROUPS:
        assert config_files(group), f"conf/{group} is empty"
    assert set(list_methods()) <= set(config_files("method"))  # every registered method has its YAML
    assert {"digits", "fashion_mnist", "imagefolder"} <= set(config_files("dataset"))
    assert {"dc", "quick"} <= set(config_files("eval"))
    assert "quickstart" in config_files("experiment")


def check_composed(cfg, label: str) -> dict:
    """Resolve a composed config the way the CLI does and check that the names it selects exist."""
    plain = pipeline.resolved_config(cfg)
    assert "hydra" not in plain
    for key in ("dataset", "model", "method", "eval", "augment", "logger", "paths", "ipc", "seed"):
        assert key in plain, f"{label}: no {key!r}"
    assert plain["dataset"]["name"] in set(list_datasets()) | {"imagefolder"}, label
    assert plain["method"]["name"] in list_methods(), f"{label}: method {plain['method']['name']} is not registered"
    model = plain["model"]["name"]
    assert model in list_models() or model.startswith("timm:"), f"{label}: unknown model {model}"
    assert plain["logger"]["name"] in ("none", "wandb"), label
    EvalProtocol.from_dict(plain["eval"])  # raises on unknown eval keys
    return plain


def test_every_file_of_every_component_group_composes(hydra_compose):
    # one compose selects the i-th file of every group at once (Hydra's compose is slow)
    groups = {group: config_files(group) for group in CONFIG_GROUPS if group != "experiment"}
    for i in range(max(len(files) for files in groups.values())):
        overrides = [f"{group}={files[i]}" for group, files in groups.items() if i < len(files)]
        plain = check_composed(hydra_compose(*overrides), " ".join(overrides))
        for override in overrides:
            group, name = override.split("=")
            if group in ("dataset", "method", "eval", "logger"):
                assert plain[group]["name"] == name, override


def experiment_sample() -> list[str]:
    """quickstart and the first preset of every method (all presets run in the slow test)."""
    files = config_files("experiment")
    firsts = {name.split("_")[0]: name for name in reversed(files)}
    return sorted({"quickstart", *firsts.values()} & set(files))


def check_experiment(hydra_compose, name: str) -> None:
    plain = check_composed(hydra_compose(f"experiment={name}"), f"experiment={name}")
    prefix = name.split("_")[0]
    if prefix in list_methods():
        assert plain["method"]["name"] == prefix, f"experiment={name} runs {plain['method']['name']}"
        assert f"_{plain['dataset']['name']}_" in f"_{name}_", f"experiment={name} uses {plain['dataset']['name']}"
        assert re.search(rf"_ipc{plain['ipc']}(_|$)", name), f"experiment={name} has ipc={plain['ipc']}"


@pytest.mark.parametrize("name", experiment_sample())
def test_experiment_presets_compose(hydra_compose, name):
    check_experiment(hydra_compose, name)


@pytest.mark.slow
def test_every_experiment_preset_composes(hydra_compose):
    for name in config_files("experiment"):
        check_experiment(hydra_compose, name)


@pytest.mark.parametrize("launcher", ["joblib_gpus", "slurm", "submitit_local"])
def test_launcher_configs_compose(hydra_compose, launcher):
    cfg = hydra_compose(f"hydra/launcher={launcher}", hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert {"joblib_gpus": "Joblib", "slurm": "Slurm", "submitit_local": "LocalLauncher"}[launcher] in target


def test_resolved_config_applies_smoke_settings(hydra_compose):
    full = pipeline.resolved_config(hydra_compose("method=dm"))
    smoke = pipeline.resolved_config(hydra_compose("method=dm", "smoke=true"))
    assert full["smoke"] is False and smoke["smoke"] is True
    # the method's smoke block is merged; the other options stay
    assert full["method"]["smoke"]
    assert_merged(smoke["method"], full["method"], full["method"]["smoke"], "method")
    assert smoke["method"]["iterations"] < full["method"]["iterations"]
    assert smoke["method"]["lr_img"] == full["method"]["lr_img"]
    # the evaluator and the dataset shrink
    settings = full["smoke_settings"]
    assert not full["eval"].get("smoke")  # dc has no reductions of its own on top of smoke_settings.eval
    assert_merged(smoke["eval"], full["eval"], settings["eval"], "eval")
    assert smoke["eval"]["epochs"] < full["eval"]["epochs"] and smoke["eval"]["num_seeds"] < full["eval"]["num_seeds"]
    assert set(smoke["eval"]["models"]) < set(full["eval"]["models"])
    assert smoke["eval"]["lr"] == full["eval"]["lr"] and smoke["eval"]["name"] == full["eval"]["name"]
    assert "max_train_per_class" not in full["dataset"]
    assert all(smoke["dataset"][key] == value for key, value in settings["dataset"].items())
    assert "smoke" not in pipeline.method_options(smoke) and "name" not in pipeline.method_options(smoke)


def assert_merged(merged: dict, full: dict, block: dict, where: str) -> None:
    """Every key of the smoke `block` holds its value in `merged`; nested blocks keep the keys they do not set."""
    for key, value in block.items():
        if isinstance(value, dict) and isinstance(full.get(key), dict):
            assert merged[key].keys() >= full[key].keys(), f"{where}.{key} lost keys"
            assert_merged(merged[key], full[key], value, f"{where}.{key}")
        else:
            assert merged[key] == value, f"{where}.{key}"


@pytest.mark.parametrize("method", config_files("method"))
def test_every_method_smoke_block_is_merged(hydra_compose, method):
    cfg = hydra_compose(f"method={method}", "smoke=true")
    full = OmegaConf.to_container(cfg.method, resolve=True)  # the composed config itself is left as it was
    smoke = pipeline.resolved_config(cfg)["method"]
    assert_merged(smoke, full, full.get("smoke") or {}, f"method={method}")
    assert smoke.keys() == full.keys()  # a smoke block sets existing options only


def test_quickstart_experiment(hydra_compose):
    cfg = pipeline.resolved_config(hydra_compose("experiment=quickstart"))
    chosen = (cfg["method"]["name"], cfg["dataset"]["name"], cfg["eval"]["name"], cfg["ipc"])
    assert chosen == ("dm", "digits", "quick", 10)


def test_missing_fashion_mnist_files_through_the_pipeline(hydra_compose, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = pipeline.resolved_config(hydra_compose("dataset=fashion_mnist", f"dataset.root={empty}", "smoke=true"))
    with pytest.raises(DDBenchError) as err:
        pipeline.load_splits(cfg, torch.device("cpu"))
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and str(empty) in message


# --------------------------------------------------------------------------------------- CLI helpers


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], True),
        (["paths.records=x"], True),
        (["paths.records=x", "smoke=true", "seed=3"], True),
        (["method=dm"], False),
        (["dataset=digits"], False),
        (["ipc=1"], False),
        (["+experiment=quickstart"], False),
        (["method.iterations=5"], False),
        (["-m", "method=dm,random"], False),
        (["--multirun"], False),
        (["--help"], False),
    ],
)
def test_wants_quickstart(argv, expected):
    assert wants_quickstart(argv) is expected




def test_command_line_keys_win_over_smoke_settings(hydra_compose):
    from ddbench.pipeline import resolved_config

    overrides = ["smoke=true", "eval.epochs=7", "method=dm", "method.iterations=3"]
    cfg = hydra_compose(*overrides)
    plain = resolved_config(cfg, overrides)
    assert plain["eval"]["epochs"] == 7  # the user's value, not smoke_settings.eval.epochs
    assert plain["method"]["iterations"] == 3  # the user's value, not the method's smoke block
    assert plain["eval"]["num_seeds"] == cfg.smoke_settings.eval.num_seeds  # untouched keys still shrink
    assert resolved_config(cfg, [])["eval"]["epochs"] == cfg.smoke_settings.eval.epochs
