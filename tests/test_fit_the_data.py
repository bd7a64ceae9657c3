"""Augmentation that fits the data, the teacher in the record, and the reference rows beside the methods."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from ddbench.board import Board, cells
from ddbench.cache import Cache
from ddbench.data import dataset_info, load_dataset
from ddbench.evaluation import EvalProtocol, Evaluator, reference_results
from ddbench.pipeline import shortened_settings
from ddbench.records import leaderboard_frame, make_record, reference_frame, render_markdown
from ddbench.records.html import html_report
from ddbench.training import NetworkBatch, TeacherConfig, train
from ddbench.training.recipe import TrainRecipe, crop_padding_for
from ddbench.training.teacher import Teacher, load_teacher, teacher_key
from ddbench.utils import DDBenchError, make_generator

CPU = torch.device("cpu")
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crop_padding_is_an_eighth_of_the_side_rounded_half_up():
    assert [crop_padding_for(s) for s in (8, 16, 28, 32, 64, 224)] == [1, 2, 4, 4, 8, 28]


@pytest.mark.parametrize("name, flip, padding", [("digits", False, 2), ("mnist", False, 4), ("svhn", False, 4),
                                                 ("fashion_mnist", True, 4), ("cifar10", True, 4),
                                                 ("tinyimagenet", True, 8)])
def test_auto_follows_the_dataset_and_explicit_values_win(name, flip, padding):
    info = dataset_info(name)
    auto = TrainRecipe().for_data(info)
    assert (auto.flip, auto.crop_padding) == (flip, padding)
    explicit = TrainRecipe(flip=True, crop_padding=1).for_data(info)
    assert (explicit.flip, explicit.crop_padding) == (True, 1)


def test_every_protocol_and_its_teacher_resolve_for_the_data(digits_small):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("ddbench.conf", version_base=None):
        for name in ("kd", "cda", "infer", "dq"):
            cfg = OmegaConf.to_container(compose("config", overrides=[f"eval={name}"]).eval, resolve=True)
            resolved = Evaluator(digits_small, EvalProtocol.from_dict(cfg)).protocol
            assert (resolved.flip, resolved.crop_padding) == (False, 2), name
            assert (resolved.teacher.flip, resolved.teacher.crop_padding) == (False, 2), name


def test_the_kd_teacher_trains_as_the_whole_dataset_row_does(digits_small):
    """A weaker teacher caps the kd row (digits, IPC 50: a crop-trained 97.2 % teacher held random real images to
    97.6 %, under their hard-label 98.3 %); kd's teacher takes the whole-dataset run's augmentation and epochs."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("ddbench.conf", version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=["eval=kd"]).eval, resolve=True)
    protocol = Evaluator(digits_small, EvalProtocol.from_dict(cfg)).protocol
    assert protocol.teacher.augment == protocol.augment == "dsa"
    assert protocol.teacher.epochs == cfg["full_data"]["epochs"] == 200
    assert protocol.teacher.models == ["convnet"]


class RecordingNets:
    """A network batch that keeps every training batch it sees (x [S,B,C,H,W])."""

    def __init__(self, nets: NetworkBatch):
        self.nets, self.name, self.seen = nets, nets.name, []

    def __len__(self):
        return len(self.nets)

    def __call__(self, x):
        self.seen.append(x.detach().clone())
        return self.nets(x)

    def __getattr__(self, name):
        return getattr(self.nets, name)


def test_a_dataset_that_must_not_be_mirrored_never_sees_a_flip_unless_asked(digits_small):
    x = digits_small.train.images[:16]
    y = digits_small.train.labels[:16]
    mirrored = x.flip(-1)

    def batches(flip) -> torch.Tensor:
        nets = RecordingNets(NetworkBatch("mlp", digits_small.info, [0], CPU, vmap=False, width=8))
        recipe = TrainRecipe(epochs=6, batch_size=16, lr=0.01, crop_padding=0, flip=flip).for_data(digits_small.info)
        train(nets, x, y, recipe, make_generator(0))
        return torch.cat([b.reshape(-1, *x.shape[1:]) for b in nets.seen])

    def is_mirror(seen: torch.Tensor) -> torch.Tensor:  # a sample equal to a mirrored image and to no original
        same = lambda ref: (seen[:, None] - ref[None]).abs().flatten(2).amax(-1).min(1).values < 1e-6  # noqa: E731
        return same(mirrored) & ~same(x)

    assert not is_mirror(batches("auto")).any()
    assert is_mirror(batches(True)).any()  # asked for: flips happen


def test_bad_augmentation_values_name_the_option():
    with pytest.raises(DDBenchError, match="crop_padding must be 'auto' or an int >= 0"):
        TrainRecipe(crop_padding=-1).check_recipe("eval")
    with pytest.raises(DDBenchError, match="flip must be 'auto', true or false"):
        TrainRecipe(flip="yes").check_recipe("eval.teacher")
    with pytest.raises(DDBenchError, match="resolve it for the dataset"):
        train(NetworkBatch("mlp", dataset_info("digits"), [0], CPU, vmap=False, width=8),
              torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.int64), TrainRecipe(epochs=1), make_generator(0))


def test_the_dataset_can_say_otherwise(digits_small):
    assert load_dataset("digits", max_train_per_class=5, max_test_per_class=2, mirror_safe=True).info.mirror_safe
    info = replace(digits_small.info, mirror_safe=True)
    assert TrainRecipe().for_data(info).flip is True


def test_changing_the_augmentation_default_changes_the_teacher_key(digits_small):
    auto = TeacherConfig(models=["convnet"])
    old = TeacherConfig(models=["convnet"], flip=True, crop_padding=4)
    assert teacher_key(auto, digits_small, 0) != teacher_key(old, digits_small, 0)
    assert teacher_key(auto, digits_small, 0) == teacher_key(TeacherConfig(models=["convnet"], flip=False,
                                                                           crop_padding=2), digits_small, 0)


def test_a_teacher_caches_its_test_accuracy(digits_small, tmp_path):
    cfg = TeacherConfig(models=["mlp"], model_kwargs={"mlp": {"width": 16}}, epochs=2, batch_size=64)
    teacher = load_teacher(cfg, digits_small, CPU, Cache(tmp_path))
    summary = teacher.summary()
    assert summary["models"] == ["mlp"] and summary["flip"] is False and summary["crop_padding"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["train_accuracy"] <= 1
    logits = torch.cat([teacher(digits_small.test.images)])
    assert summary["test_accuracy"] == pytest.approx(
        float((logits.argmax(-1) == digits_small.test.labels).float().mean()))
    assert load_teacher(cfg, digits_small, CPU, Cache(tmp_path)).summary() == summary  # from the cache


def test_a_weak_teacher_gets_one_warning_line(digits_small, caplog):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("ddbench.conf", version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=["eval=kd"]).eval, resolve=True)
    evaluator = Evaluator(digits_small, EvalProtocol.from_dict(cfg))
    evaluator._teacher = Teacher([torch.nn.Identity()], ["convnet"], test_accuracy=0.889)
    with caplog.at_level(logging.WARNING):
        evaluator.warn_weak_teacher("convnet", 0.98)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "88.90 %" in warned[0] and "flip=False" in warned[0] and "epochs" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluator.warn_weak_teacher("convnet", 0.90)  # within 2 points
        evaluator.warn_weak_teacher("alexnet", 0.99)  # another architecture: not comparable
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_teacher_agreement_is_the_share_of_images_whose_teacher_class_is_their_label(digits_small):
    class FirstPixels(torch.nn.Module):  # logits = the first 10 pixels: the class is where the bright pixel is
        def forward(self, x):
            return x.flatten(1)[:, :10]

    evaluator = Evaluator(digits_small, EvalProtocol.from_dict({"name": "kd", "kind": "kd", "label_source": "teacher"}))
    evaluator._teacher = Teacher([FirstPixels()], ["convnet"], test_accuracy=0.9)
    images = torch.zeros(4, 1, 4, 4)
    for i, cls in enumerate([3, 7, 1, 1]):
        images.view(4, -1)[i, cls] = 1.0
    assert evaluator.teacher_agreement(images, torch.tensor([3, 7, 1, 2])) == pytest.approx(0.75)
    assert evaluator.teacher_agreement(images.unsqueeze(0), torch.tensor([[3, 7, 0, 2]])) == pytest.approx(0.5)


def test_a_kd_run_records_its_teacher_and_a_reference_run_its_rows(tmp_path):
    env_cache = f"paths.cache={tmp_path / 'cache'}"
    run = subprocess.run([str(BIN / "ddbench-run"), "method=random", "dataset=digits", "ipc=1", "eval=kd",
                          "smoke=true", f"paths.records={tmp_path / 'r'}", env_cache, f"hydra.run.dir={tmp_path / 'o'}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r").rglob("*.json")]
    assert record["teacher"]["models"] == ["convnet"] and 0 <= record["teacher"]["test_accuracy"] <= 1
    assert record["teacher"]["flip"] is False
    assert 0 <= record["scores"]["teacher_agreement"] <= 1  # see the next test for its value
    ref = subprocess.run([str(BIN / "ddbench-reference"), "dataset=digits", "eval=kd", "smoke=true",
                          f"paths.records={tmp_path / 'r'}", env_cache, f"hydra.run.dir={tmp_path / 'o2'}"],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    refs = {r["reference"]: r for r in map(json.loads, (p.read_text() for p in (tmp_path / "r").rglob("*.json")))
            if r.get("reference")}
    assert set(refs) == {"whole_dataset", "teacher"}
    assert refs["teacher"]["accuracies"] == [record["teacher"]["test_accuracy"]]  # the same cached teacher
    assert refs["whole_dataset"]["mean"] == pytest.approx(record["scores"]["acc_full_hard"])  # HLR's cached run
    assert refs["whole_dataset"]["ipc"] is None and refs["whole_dataset"]["method"] == "whole dataset"


def test_reference_results_without_a_teacher_have_only_the_whole_dataset_rows(digits_small, tmp_path):
    proto = EvalProtocol.from_dict({"epochs": 2, "num_seeds": 2, "models": ["mlp"], "model_kwargs": {"mlp": {"width": 8}},
                                    "full_data": {"epochs": 1}})
    results = reference_results(digits_small, proto, Cache(tmp_path))
    assert [(r.kind, r.model, len(r.accuracies)) for r in results] == [("whole_dataset", "mlp", 2)]


def test_a_whole_dataset_row_read_from_the_cache_says_what_its_training_took(digits_small, tmp_path):
    """The second reference run reads the whole-dataset run from the cache: its row carries the seconds the
    training took (stored with it), not the milliseconds of the cache read."""
    proto = EvalProtocol.from_dict({"epochs": 1, "num_seeds": 2, "models": ["mlp"], "checkpoint_minutes": 0,
                                    "model_kwargs": {"mlp": {"width": 8}}, "full_data": {"epochs": 40}})
    first = reference_results(digits_small, proto, Cache(tmp_path))[0]
    again = reference_results(digits_small, proto, Cache(tmp_path))[0]
    assert again.accuracies == first.accuracies
    assert again.seconds == first.seconds > 0.0


def record(method, ipc, model, accs, reference=None, protocol="dc"):
    return make_record(run_id=f"{method}-{ipc}-{model}", method=method, dataset="digits", ipc=ipc, label_type="hard",
                       protocol=protocol, eval_model=model, accuracies=accs, seeds=list(range(len(accs))),
                       distill_seconds=None, eval_seconds=1.0, peak_gpu_memory_bytes=None, device="cpu", config={},
                       seed=0, artifact=None, git_commit="abc", versions={}, reference=reference)


def test_a_record_without_ipc_must_be_a_reference_row():
    with pytest.raises(DDBenchError, match="null only in a reference row"):
        record("dm", None, "convnet", [0.5])
    with pytest.raises(DDBenchError, match="reference"):
        record("x", None, "convnet", [0.5], reference="best")


def test_reference_rows_and_a_partial_cross_architecture_table_render():
    records = [record("dm", 1, "convnet", [0.8]), record("dm", 10, "convnet", [0.9, 0.92]),
               record("dm", 10, "alexnet", [0.7]), record("random", 10, "convnet", [0.85]),
               record("whole dataset", None, "convnet", [0.98, 0.99], "whole_dataset"),
               record("whole dataset", None, "alexnet", [0.95], "whole_dataset"),
               record("teacher", None, "convnet", [0.972], "teacher", protocol="kd"),
               record("datm", 10, "convnet", [0.95], protocol="kd")]
    frame, refs = leaderboard_frame(records), reference_frame(records)
    assert "whole dataset" not in set(frame["method"])
    text = render_markdown(frame, references=refs)
    dc, kd = text.split("## digits · protocol `kd`")
    assert "| whole dataset | hard | 98.50 ± 0.50 (n=2) | 98.50 ± 0.50 (n=2) |" in dc
    assert "| teacher (convnet) | — | 97.20 ± 0.00 (n=1) |" in kd and "| whole dataset |" not in kd
    cross = dc.split("Cross-architecture")[1]
    assert "| convnet | alexnet | Mean over models |" in cross
    assert "| dm | hard | 10 | 91.00 ± 1.00 (n=2) | 70.00 ± 0.00 (n=1) | 80.50 |" in cross
    assert "| random | hard | 10 | 85.00 ± 0.00 (n=1) | — | — |" in cross  # still running: missing, never 0
    assert "| dm | hard | 1 |" not in cross  # IPC 1 was evaluated on ConvNet only
    assert "| whole dataset | hard | all | 98.50 ± 0.50 (n=2) | 95.00 ± 0.00 (n=1) | 96.75 |" in cross
    page, _ = html_report(frame, references=refs)
    assert page.count(">whole dataset</td>") == 2 and ">teacher (convnet)</td>" in page
    assert "70.00 ± 0.00 (n=1)" in page


def test_runs_relabelled_by_another_teacher_never_pool_with_the_current_ones():
    def kd(method, accs, teacher_accuracy, created, reference=None):
        r = record(method, None if reference else 50, "convnet", accs, reference, protocol="kd")
        r.update(teacher={"models": ["convnet"], "test_accuracy": teacher_accuracy, "epochs": 100}, created=created,
                 run_id=f"{method}-{created}")
        return r

    old, new = 0.9722, 0.9889
    records = [kd("random", [0.976, 0.978], old, "2026-12-06T10:00:00+00:00"),
               kd("random", [0.984, 0.986], new, "2026-12-06T16:00:00+00:00"),
               kd("random", [0.985], new, "2026-12-06T17:00:00+00:00"),
               kd("datm", [0.976], old, "2026-12-06T10:00:00+00:00"),  # no newer run yet: its own teacher stands
               kd("teacher", [old], old, "2026-12-06T10:00:00+00:00", "teacher"),
               kd("teacher", [new], new, "2026-12-06T16:00:00+00:00", "teacher")]
    records[1]["teacher"]["epochs"] = records[2]["teacher"]["epochs"] = records[5]["teacher"]["epochs"] = 200
    frame, refs = leaderboard_frame(records), reference_frame(records)
    rows = {r.method: (r.n_seeds, round(r.mean, 4)) for r in frame.itertuples()}
    assert rows == {"random": (3, 0.985), "random [earlier teacher, 97.22 %]": (2, 0.977), "datm": (1, 0.976)}
    assert sorted(refs["method"]) == ["teacher", "teacher [earlier teacher, 97.22 %]"]
    assert float(refs[refs["method"] == "teacher"]["mean"].iloc[0]) == pytest.approx(new)
    text = render_markdown(frame, references=refs)
    assert "| random [earlier teacher, 97.22 %] | hard | 97.70 ± 0.10 (n=2) |" in text


def test_a_cell_relabelled_by_an_earlier_teacher_than_the_teacher_row_is_marked():
    def kd(method, ipc, model, accs, teacher_accuracy, epochs, created, reference=None):
        r = record(method, ipc, model, accs, reference, protocol="kd")
        r.update(teacher={"models": ["convnet"], "test_accuracy": teacher_accuracy, "epochs": epochs},
                 created=created, run_id=f"{method}-{ipc}-{model}-{created}")
        return r

    old, new = ("2026-12-04T10:00:00+00:00", 0.9722, 100), ("2026-12-06T16:00:00+00:00", 0.9889, 200)
    records = [kd("random", 50, "convnet", [0.984], new[1], new[2], new[0]),
               kd("infer", 50, "convnet", [0.978], old[1], old[2], old[0]),  # not rerun since the teacher changed
               kd("infer", 10, "convnet", [0.974], new[1], new[2], new[0]),
               kd("infer", 50, "alexnet", [0.950], old[1], old[2], old[0]),
               kd("teacher", None, "convnet", [old[1]], old[1], old[2], old[0], "teacher"),
               kd("teacher", None, "convnet", [new[1]], new[1], new[2], new[0], "teacher")]
    frame, refs = leaderboard_frame(records), reference_frame(records)
    text = render_markdown(frame, references=refs)
    assert "| infer | hard | 97.40 ± 0.00 (n=1) | 97.80 ± 0.00 (n=1) ‡ |" in text
    assert "| random | hard | — | 98.40 ± 0.00 (n=1) |" in text
    assert "- ‡ relabelled by an earlier teacher than the `teacher` row (infer IPC 50: 97.22 %)" in text
    cross = text.split("Cross-architecture")[1]
    assert "| infer | hard | 50 | 97.80 ± 0.00 (n=1) ‡ | 95.00 ± 0.00 (n=1) ‡ |" in cross
    assert "infer IPC 50 alexnet: 97.22 %" in cross
    page, _ = html_report(frame, references=refs)
    assert page.count("97.80 ± 0.00 ‡") == 1 and "relabelled by an earlier teacher (97.22 % on the test set)" in page
    assert "97.40 ± 0.00 ‡" not in page
    # the same teacher as the teacher row (here: equal summaries, another record): nothing is marked
    rerun = records[:1] + [kd("infer", 50, "convnet", [0.979], new[1], new[2], "2026-12-06T18:00:00+00:00")] + \
        records[2:3] + records[5:]
    assert "‡" not in render_markdown(leaderboard_frame(rerun), references=reference_frame(rerun))


def test_cross_architecture_cells_share_the_set_and_stay_on_the_board():
    board = Board.from_dict({
        "name": "x", "dataset": "digits", "ipcs": [1, 10], "eval_models": ["convnet"],
        "methods": {"random": {}, "dm": {"overrides": ["method.iterations=5"]}},
        "cross_architecture": {"models": ["alexnet", "vgg11"], "ipcs": [10], "num_seeds": 3},
    }, "test")
    todo, _ = cells(board)
    kinds = [c.kind for c in todo]
    assert kinds == ["reference"] * 2 + ["main"] * 4 + ["cross"] * 4
    ref, cross_ref = todo[:2]  # each whole-dataset row gets the seeds of its column
    assert ref.script == "ddbench-reference" and ref.eval_models == ("convnet",)
    assert not any(a.startswith("eval.num_seeds") for a in ref.args)
    assert cross_ref.eval_models == ("alexnet", "vgg11")
    assert {"eval.num_seeds=3", "board.num_seeds=3"} <= set(cross_ref.args)
    assert shortened_settings({"smoke": False, "eval": {"num_seeds": 3}, "board": {"num_seeds": 3}},
                              list(cross_ref.args)) is None
    main = next(c for c in todo if c.kind == "main" and c.method == "dm" and c.ipc == 10)
    cross = [c for c in todo if c.kind == "cross" and c.method == "dm"]
    assert [c.label for c in cross] == ["dm ipc10 dc alexnet", "dm ipc10 dc vgg11"]
    assert all(c.distillation[:3] == main.distillation[:3] for c in cross)
    assert {a for c in cross for a in c.args if a.startswith("method.")} == {"method.iterations=5"}
    cfg = {"smoke": False, "eval": {"num_seeds": 3}, "board": {"num_seeds": 3}}
    assert shortened_settings(cfg, list(cross[0].args)) is None
    assert shortened_settings({**cfg, "board": {"num_seeds": None}}, list(cross[0].args)) == "eval.num_seeds=3"
    with pytest.raises(DDBenchError, match="cross_architecture must map models and ipcs"):
        Board.from_dict({"name": "x", "dataset": "digits", "ipcs": [1], "methods": {"random": {}},
                         "cross_architecture": {"models": ["alexnet"]}}, "test")


def test_a_cached_ensemble_loads_without_measuring_again(digits_small, tmp_path, monkeypatch):
    import ddbench.training.teacher as teacher_module

    cfg = TeacherConfig(models=["mlp", "mlp"], model_kwargs={"mlp": {"width": 16}}, epochs=1, batch_size=64)
    first = load_teacher(cfg, digits_small, CPU, Cache(tmp_path))
    mean_logits = first(digits_small.test.images)
    assert first.test_accuracy == pytest.approx(
        float((mean_logits.argmax(-1) == digits_small.test.labels).float().mean()))

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached ensemble measured its accuracy again")

    monkeypatch.setattr(teacher_module, "split_accuracy", no_forward)
    again = load_teacher(cfg, digits_small, CPU, Cache(tmp_path))
    assert (again.train_accuracy, again.test_accuracy) == (first.train_accuracy, first.test_accuracy)
