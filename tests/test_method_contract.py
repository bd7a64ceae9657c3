"""The method contract, checked for every registered method (parametrized over list_methods(), so a new
method gets these tests with no edit here), and a method plug-in added from outside the package.

Contract: the YAML's values are the Options dataclass's defaults; options are validated (unknown keys are
rejected with the valid ones listed) before any data loads; `ddbench-run method=M dataset=digits ipc=1
smoke=true` writes a valid artifact and a record.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import torch

from ddbench import pipeline
from ddbench.artifact import load_artifact
from ddbench.cache import Cache
from ddbench.methods import create_method, list_methods, method_class, method_options
from ddbench.records import read_records
from ddbench.utils import DDBenchError

BIN = Path(sys.executable).parent
METHODS = list_methods()
TIMEOUT = 900


@pytest.fixture(scope="module")
def composed():
    """(name, smoke) → the run config of `method=name dataset=digits` as the CLI resolves it."""
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        def resolve(name: str, smoke: bool = False) -> dict:
            cfg = compose(config_name="config", overrides=[
                f"method={name}", "dataset=digits", f"smoke={str(smoke).lower()}", "paths.output=/tmp/unused"])
            return pipeline.resolved_config(cfg, overrides=[])

        yield resolve


@pytest.fixture
def method_yaml(composed):
    """name → conf/method/<name>.yaml as Hydra composes it (defaults: included)."""
    return lambda name: composed(name)["method"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cwd / "xdg"), **env}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(proc.args)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


# ------------------------------------------------------------------------------------- options, in-process


@pytest.mark.parametrize("name", METHODS)
def test_the_yaml_states_the_options_defaults(name, method_yaml):
    cfg = method_yaml(name)
    assert cfg.pop("name") == name
    smoke = cfg.pop("smoke", None) or {}
    options = method_options(name, cfg)
    assert options == method_class(name).Options(), "conf/method YAML and the Options dataclass disagree"
    method_options(name, {**cfg, **smoke})  # the smoke block is valid too


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_keys_are_rejected_with_the_valid_ones_listed(name):
    with pytest.raises(DDBenchError) as err:
        method_options(name, {"no_such_option": 1})
    message = str(err.value)
    assert "no_such_option" in message and "valid options" in message
    assert all(key in message for key in method_class(name).Options.valid_keys())


@pytest.mark.parametrize("name", METHODS)
def test_a_method_draws_all_randomness_from_the_run_seed(name, composed, digits_small, tmp_path_factory, one_thread):
    cfg = composed(name, smoke=True)
    cfg["model"] = {"name": "convnet", "width": 8}
    options = {k: v for k, v in cfg["method"].items() if k not in ("name", "smoke")}
    cache = Cache(tmp_path_factory.mktemp(f"seeds_{name}"))

    def distill(seed: int):
        return create_method(name, splits=digits_small, ipc=1, seed=seed, device=torch.device("cpu"),
                             options=options, model=cfg["model"], augment=cfg["augment"], cache=cache).distill()

    torch.manual_seed(111)  # the global RNG state must not matter
    first = distill(1)
    torch.manual_seed(222)
    again, other = distill(1), distill(2)
    assert first.images.shape == (10, 1, 16, 16) and first.images.dtype == torch.float32
    assert bool(first.images.isfinite().all()) and not first.images.requires_grad
    if first.labels.dtype == torch.int64:  # class-major hard labels, or soft logits [n, K]
        assert torch.equal(first.labels, torch.arange(10))
    else:
        assert first.labels.shape == (10, 10) and first.labels.dtype == torch.float32
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)


def test_option_values_are_checked():
    with pytest.raises(DDBenchError, match=r"method.iterations must be >= 1"):
        method_options("dm", {"iterations": 0})
    with pytest.raises(DDBenchError, match=r"method.lr_img must be > 0"):
        method_options("dm", {"lr_img": -1.0})
    with pytest.raises(DDBenchError, match=r"method.init must be one of 'real', 'noise'"):
        method_options("dm", {"init": "zeros"})
    with pytest.raises(DDBenchError, match="unknown experts option"):
        method_options("mtt", {"experts": {"lrr": 0.1}})


def test_bad_options_fail_before_any_data_is_loaded(tmp_path):
    # the dataset root does not exist: had the data been loaded first, the error would name the dataset
    proc = run([str(BIN / "ddbench-run"), "method=dm", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'none'}",
                "ipc=1", "+method.iteration=5", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 2, explain(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown dm option(s) ['iteration']" in errors[0], explain(proc)


# ------------------------------------------------------------------------------- smoke runs of every method


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One `ddbench-run -m method=<every method>` smoke sweep (one process: imports are paid once)."""
    base = tmp_path_factory.mktemp("contract")
    proc = run([str(BIN / "ddbench-run"), "-m", f"method={','.join(METHODS)}", "dataset=digits", "ipc=1",
                "smoke=true", "progress=false", f"paths.records={base / 'records'}", f"paths.cache={base / 'cache'}",
                f"hydra.sweep.dir={base / 'out'}", "hydra.sweep.subdir=${method.name}"], base)
    assert proc.returncode == 0, explain(proc)
    return base


@pytest.mark.parametrize("name", METHODS)
def test_smoke_run_writes_a_valid_artifact_and_a_record(sweep, name):
    artifact = load_artifact(sweep / "out" / name / "artifact")
    assert (artifact.meta["method"], artifact.dataset, artifact.ipc) == (name, "digits", 1)
    assert tuple(artifact.images.shape) == (10, 1, 16, 16) and bool(artifact.images.isfinite().all())
    assert artifact.labels.shape[0] == 10
    records = [r for r in read_records(sweep / "records") if r["method"] == name]
    assert len(records) == 1, f"{name}: expected one record"
    assert 0 <= records[0]["mean"] <= 1 and records[0]["artifact"].endswith(f"{name}/artifact")


# ------------------------------------------------------------------------------------- a method plug-in

PLUGIN = '''
"""A method from outside ddbench: every image is its class mean, scaled."""
from dataclasses import dataclass

import torch

from ddbench.methods import DistillResult, Method, MethodOptions, option, register_method


@dataclass
class ClassMeanOptions(MethodOptions):
    scale: float = option(1.0, positive=True)


@register_method("classmean")
class ClassMean(Method):
    Options = ClassMeanOptions

    def distill(self):
        train = self.splits.train
        means = torch.stack([train.class_images(c).mean(0) for c in range(self.info.num_classes)])
        return DistillResult((self.opts.scale * means).repeat_interleave(self.ipc, 0), self.hard_labels())
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A module + its YAML, found through entry points of a folder on PYTHONPATH (nothing is installed)."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "ddbench_classmean"
    (package / "conf" / "method").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "method" / "classmean.yaml").write_text("name: classmean\nscale: 1.0\nsmoke: {}\n")
    info = root / "ddbench_classmean-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ddbench-classmean\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ddbench.methods]\nclassmean = ddbench_classmean\n\n[ddbench.configs]\nclassmean = ddbench_classmean.conf\n")
    return root


def test_a_plugin_method_is_listed(plugin_dir, tmp_path):
    # in a fresh interpreter, so that the plug-in stays out of this test session's registry
    code = ("from ddbench.methods import list_methods, method_options; print(list_methods()); "
            "print(method_options('classmean', {'scale': 2.0}).scale)")
    proc = run([sys.executable, "-c", code], tmp_path, PYTHONPATH=str(plugin_dir))
    assert proc.returncode == 0, explain(proc)
    listed, scale = proc.stdout.splitlines()[-2:]
    assert "'classmean'" in listed and all(f"'{name}'" in listed for name in METHODS) and scale == "2.0"


def test_a_plugin_method_runs_and_sweeps_through_ddbench_run(plugin_dir, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    common = ["dataset=digits", "ipc=1", "smoke=true", "progress=false", "smoke_settings.eval.num_seeds=1",
              "smoke_settings.eval.epochs=1", f"paths.records={tmp_path / 'records'}",
              f"paths.cache={tmp_path / 'cache'}"]
    single = run([str(BIN / "ddbench-run"), "method=classmean", *common, f"hydra.run.dir={tmp_path / 'one'}"],
                 tmp_path, **env)
    assert single.returncode == 0, explain(single)
    assert "classmean | digits | ipc 1" in single.stdout
    assert load_artifact(tmp_path / "one" / "artifact").meta["config"]["method"]["scale"] == 1.0
    swept = run([str(BIN / "ddbench-run"), "-m", "method=classmean", "method.scale=1.0,0.5", *common,
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, **env)
    assert swept.returncode == 0, explain(swept)
    records = [r for r in read_records(tmp_path / "records") if r["method"] == "classmean"]
    assert len(records) == 3
    assert sorted(r["config"]["method"]["scale"] for r in records) == [0.5, 1.0, 1.0]
    bad = run([str(BIN / "ddbench-run"), "method=classmean", "method.scale=0", *common,
               f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path, **env)
    assert bad.returncode == 2 and "method.scale must be > 0" in bad.stderr, explain(bad)
