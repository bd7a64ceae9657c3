"""The Python API (ddbench.evaluate / distill / run / leaderboard ...): the same numbers as the CLI, checks of a
user's own tensors before anything loads, records marked `source: api`, the README's example, a light import.

Everything runs on digits with smoke settings cut further (2 epochs, 2 seeds), under temporary folders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddbench
from ddbench import pipeline
from ddbench.api_inputs import to_model_space
from ddbench.data import load_dataset
from ddbench.records import read_records

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["smoke=true", "eval.epochs=2", "progress=false"]  # the evaluator: 2 epochs, smoke's 2 seeds, ConvNet
SMOKE_DIGITS = {"max_train_per_class": 50, "max_test_per_class": 20}  # smoke=true's dataset cut


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    """A saved digits artifact (random real images, IPC 1) with a learned lr, so that the lr path is compared."""
    artifact = ddbench.distill("random", "digits", 1, overrides=["smoke=true", "progress=false"], device="cpu")
    artifact.lr = torch.tensor(0.02)
    return artifact.save(tmp_path_factory.mktemp("api") / "artifact")


@pytest.fixture(scope="module")
def artifact(artifact_dir) -> ddbench.Artifact:
    return ddbench.load_artifact(artifact_dir)


@pytest.fixture(scope="module")
def smoke_digits():
    """digits as smoke=true loads it (normalized with its mean/std)."""
    return load_dataset("digits", **SMOKE_DIGITS)


def test_import_ddbench_does_not_import_torch():
    code = "import ddbench, sys; ddbench.__version__; assert 'torch' not in sys.modules, 'ddbench imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_evaluate_gives_seed_for_seed_the_accuracies_of_ddbench_eval(artifact_dir, artifact, tmp_path):
    cli = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the same threads as this process
    env.pop("HYDRA_FULL_ERROR", None)
    args = [str(BIN / "ddbench-eval"), f"artifact={artifact_dir}", *TINY, "eval.seed_base=1", "eval.num_seeds=2",
            "device=cpu", f"paths.records={cli / 'records'}", f"paths.cache={cli / 'cache'}",
            f"hydra.run.dir={cli / 'out'}"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_records(cli / "records")

    # a cache of its own: the networks are trained again, not taken from the CLI's finished runs
    report = ddbench.evaluate(artifact.images, artifact.labels, dataset="digits", seeds=[1, 2], normalized=True,
                              learned_lr=artifact.lr, device="cpu", records=tmp_path / "api",
                              overrides=[*TINY, f"paths.cache={tmp_path / 'api-cache'}"])
    assert report.models == ["convnet"] and report.seeds == {"convnet": [1, 2]} == {"convnet": record["seeds"]}
    assert report.accuracies["convnet"] == record["accuracies"]
    assert report.lr["convnet"] == pytest.approx(0.02) and report.results[0].lr_source == "learned"
    assert report.mean["convnet"] == pytest.approx(record["mean"])
    assert report.std["convnet"] == pytest.approx(record["std"])
    frame = report.to_frame()
    assert list(frame["model"]) == ["convnet"] and frame.loc[0, "accuracies"] == record["accuracies"]
    per_seed = report.to_frame(per_seed=True)
    assert list(per_seed["seed"]) == [1, 2] and list(per_seed["accuracy"]) == record["accuracies"]

    # the API's record: read by the leaderboard, marked as the API's, with the images' hash instead of a method config
    (mine,) = read_records(tmp_path / "api")
    assert mine["source"] == "api" and mine["images_digest"] == report.images_digest
    assert mine["accuracies"] == record["accuracies"] and mine["method"] == "custom"
    assert mine["config"]["method"] == {"name": "custom", "source": "api"} and "model" not in mine["config"]
    assert mine["shortened"] == "smoke=true, eval.epochs=2"  # like the CLI's record
    assert record["shortened"].startswith("smoke=true") and record.get("source") is None
    assert ddbench.leaderboard(tmp_path / "api").empty  # shortened runs stay off the default board
    board = ddbench.leaderboard(tmp_path / "api", include_shortened=True)
    assert list(board["method"]) == ["custom [smoke=true, eval.epochs=2]"]
    assert board.loc[0, "mean"] == pytest.approx(record["mean"]) and board.loc[0, "n_seeds"] == 2


def test_pixel_and_normalized_inputs_give_the_same_result(artifact, smoke_digits, tmp_path):
    pixels = artifact.images_in_pixels()
    assert pixels.shape == artifact.images.shape and 0 <= float(pixels.min()) and float(pixels.max()) <= 1
    normalized = to_model_space(pixels, smoke_digits)
    assert torch.allclose(normalized, artifact.images, atol=1e-5)  # images_in_pixels undoes the normalization
    options = {"dataset": "digits", "device": "cpu", "overrides": [*TINY, f"paths.cache={tmp_path / 'cache'}"]}
    from_pixels = ddbench.evaluate(pixels, artifact.labels, **options)
    from_normalized = ddbench.evaluate(normalized, artifact.labels, normalized=True, **options)
    assert from_pixels.images_digest == from_normalized.images_digest  # the same tensor was trained on
    assert from_pixels.accuracies == from_normalized.accuracies
    assert from_pixels.seeds == {"convnet": [0, 1]}


def test_run_distills_evaluates_and_writes_records_marked_api(tmp_path):
    artifact, report = result = ddbench.run("random", "digits", 1, seed=3, overrides=TINY, device="cpu",
                                            records=tmp_path / "records", artifact_dir=tmp_path / "artifact")
    assert result.artifact_path == tmp_path / "artifact" and artifact.meta["seed"] == 3
    assert ddbench.load_artifact(tmp_path / "artifact").images.equal(artifact.images)
    (record,) = read_records(tmp_path / "records")
    assert record["source"] == "api" and record["method"] == "random"
    assert record["artifact"] == str(tmp_path / "artifact")
    assert record["accuracies"] == report.accuracies["convnet"] and record["distill_seconds"] is not None
    assert record["config"]["method"]["name"] == "random"  # a distillation's record keeps its config


# ------------------------------------------------------------------------------------------ bad inputs
GOOD = {"images": torch.rand(10, 1, 16, 16), "labels": torch.arange(10)}
BAD_INPUTS = {
    "wrong image size": ({"images": torch.rand(10, 1, 8, 8)}, r"shape \[N, 1, 16, 16\] for digits.*resize"),
    "no channel axis": ({"images": torch.rand(10, 16, 16)}, r"unsqueeze\(1\)"),
    "channels last": ({"images": torch.rand(10, 16, 16, 1)}, r"permute\(0, 3, 1, 2\)"),
    "label count": ({"labels": torch.arange(9)}, r"10 images but 9 labels"),
    "class count": ({"labels": torch.randn(10, 5)}, r"5 classes but digits has 10"),
    "labels out of range": ({"labels": torch.arange(1, 11)}, r"\[0, 9\].*got values in \[1, 10\]"),
    "float hard labels": ({"labels": torch.arange(10).float()}, r"labels\.long\(\)"),
    "NaN images": ({"images": torch.full((10, 1, 16, 16), float("nan"))}, r"NaN or inf"),
    "pixels out of range": ({"images": torch.randn(10, 1, 16, 16)}, r"\[0, 1\].*normalized=True"),
    "0-255 pixels": ({"images": 255 * torch.rand(10, 1, 16, 16)}, r"divide 0-255 pixels by 255"),
    "integer images": ({"images": torch.zeros(10, 1, 16, 16, dtype=torch.uint8)}, r"float"),
    "unknown dataset": ({"dataset": "digitz"}, r"unknown dataset 'digitz'; valid names: .*digits"),
    "unknown protocol": ({"protocol": "dcc"}, r"unknown protocol 'dcc'; valid names: .*\bdc\b.*kd"),
    "unknown model": ({"models": ["convnett"]}, r"unknown eval.models entry 'convnett'; valid names"),
    "seeds not consecutive": ({"seeds": [0, 2]}, r"not consecutive"),
    "bad seed count": ({"seeds": 0}, r"count >= 1"),
    "learned lr not finite": ({"learned_lr": float("nan")}, r"learned_lr.*finite"),
    "unknown eval key": ({"overrides": ["eval.no_such_key=1"]}, r"Could not override 'eval.no_such_key'"),
    "bad eval value": ({"overrides": ["eval.epochs=0"]}, r"eval.epochs must be >= 1"),
    "override grammar": ({"overrides": ["eval.epochs=["]}, r"cannot read the command line"),
    "override without value": ({"overrides": ["smoke"]}, r"not a 'key=value' string"),
    "override string": ({"overrides": "smoke=true"}, r"must be a list of 'key=value' strings"),
    "override of an argument": ({"overrides": ["dataset=mnist"]}, r"pass it as the argument \(dataset=\.\.\.\)"),
    "unknown device": ({"device": "tpu"}, r"unknown device='tpu'"),
}


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: bad inputs must be refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("data were loaded before the bad input was refused")

    monkeypatch.setattr(pipeline, "load_splits", refuse)


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_ddbench_error_naming_the_fix_before_data_load(name, no_data, tmp_path):
    changes, message = BAD_INPUTS[name]
    call = {**GOOD, "dataset": "digits", "overrides": ["smoke=true"], "records": tmp_path / "records", **changes}
    with pytest.raises(ddbench.DDBenchError, match=message) as err:
        ddbench.evaluate(**call)
    assert "\n" not in str(err.value)  # one line, as the CLI prints it
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").rglob("*.json"))


def test_bad_names_for_distill_and_run_list_the_valid_ones(no_data):
    with pytest.raises(ddbench.DDBenchError, match=r"unknown method 'dmm'; valid names: .*\bdm\b"):
        ddbench.distill("dmm", "digits", 1)
    with pytest.raises(ddbench.DDBenchError, match=r"unknown dataset 'cifar'; valid names: .*cifar10"):
        ddbench.run("dm", "cifar", 1)
    with pytest.raises(ddbench.DDBenchError, match=r"ipc must be an int >= 1, got 0"):
        ddbench.distill("dm", "digits", 0)


def test_the_listings_name_what_the_configs_accept():
    assert {"digits", "cifar10", "imagefolder"} <= set(ddbench.list_datasets())
    assert {"dc", "kd", "quick"} <= set(ddbench.list_protocols())
    assert {"random", "dm", "mtt"} <= set(ddbench.list_methods())
    assert {"convnet", "alexnet"} <= set(ddbench.list_models())


# ------------------------------------------------------------------------------------------ README
def readme_example() -> str:
    """The first python block of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)
    assert len(section) == 2, "README.md has no '## From Python' section"
    found = re.search(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert found, "the README's 'From Python' section has no python block"
    return found.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    assert "smoke=true" in code  # the example itself runs shrunk (and says how to run the real protocol)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    board = namespace["board"]
    assert {"custom [smoke=true]", "dm [smoke=true]"} <= set(board["method"])
    records = read_records(tmp_path / "my_records")
    assert records and all(r["source"] == "api" for r in records)
    json.dumps(records)  # plain JSON
