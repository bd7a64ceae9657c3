"""A finished training run of an evaluation is kept (cache kind "fits"), so no run is trained twice: a rerun, a
resumed cell and a helper process (helper=true, ddbench-board --jobs) take its result. A helper trains the runs
nobody holds, in reverse order, and the main run's record is the same as without it."""

from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager

import pytest
import torch

import ddbench.evaluation.evaluate as evaluate_mod
from ddbench.board import Board, cells, run_board
from ddbench.cache import Busy, Cache
from ddbench.cli import run as run_cli
from ddbench.data import load_dataset
from ddbench.evaluation import evaluate_synthetic
from ddbench.evaluation.evaluate import Evaluator
from ddbench.evaluation.protocol import EvalProtocol
from ddbench.records import read_records

TINY = {"convnet": {"width": 8, "depth": 2}}


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", max_train_per_class=20, max_test_per_class=10)


def kd_protocol(**overrides) -> EvalProtocol:
    """The kd protocol's shape in miniature: teacher relabelling, three fair scores (each one more run)."""
    cfg = dict(kind="kd", label_source="teacher", optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="cosine",
               temperature=4.0, t2_scaling=True, learned_lr=False, epochs=2, epochs_no_aug=2, augment="dsa",
               num_seeds=2, models=["convnet"], batch_size=64, model_kwargs=TINY, checkpoint_minutes=10, compile=False,
               teacher={"models": ["convnet"], "model_kwargs": TINY, "epochs": 1, "batch_size": 64},
               scores=["hlr", "ior", "lrs"], full_data={"epochs": 1, "batch_size": 64, "lr": None})
    cfg.update(overrides)
    return EvalProtocol.from_dict(cfg)


def synthetic():
    g = torch.Generator().manual_seed(3)
    return torch.randn(20, 1, 16, 16, generator=g), torch.arange(10).repeat(2)


@pytest.fixture
def trained(monkeypatch):
    """Counts the training runs (not the teacher's): calls of the trainer under the evaluator."""
    calls = []
    original = evaluate_mod.train

    def counting(nets, images, targets, recipe, *args, **kwargs):
        calls.append((nets.name, recipe.optimizer, images.shape[-4]))
        return original(nets, images, targets, recipe, *args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "train", counting)
    return calls


def test_a_finished_run_is_not_trained_again(splits, tmp_path, trained):
    images, labels = synthetic()
    first = evaluate_synthetic(images, labels, splits, kd_protocol(), cache=Cache(tmp_path))[0]
    assert len(trained) == 4  # evaluation, syn-hard, full data, random subsets
    trained.clear()
    again = evaluate_synthetic(images, labels, splits, kd_protocol(), cache=Cache(tmp_path))[0]
    assert trained == []
    assert again.accuracies == first.accuracies and again.scores == first.scores
    assert again.seconds == pytest.approx(first.seconds)  # the time the run took, not the time to read it

    evaluate_synthetic(images + 0.01, labels, splits, kd_protocol(), cache=Cache(tmp_path))
    assert len(trained) == 2  # other images: the evaluation and syn-hard again, the baselines not


def test_without_checkpoints_nothing_is_kept(splits, tmp_path, trained):
    images, labels = synthetic()
    for _ in range(2):
        evaluate_synthetic(images, labels, splits, kd_protocol(checkpoint_minutes=0, scores=[]), cache=Cache(tmp_path))
    assert len(trained) == 2 and not (tmp_path / "fits").exists()


def test_a_helper_alone_trains_every_run_and_the_main_run_trains_none(splits, tmp_path, trained):
    images, labels = synthetic()
    plain = evaluate_synthetic(images, labels, splits, kd_protocol(), cache=Cache(tmp_path / "plain"))[0]
    trained.clear()
    cache = Cache(tmp_path / "shared")
    helper = Evaluator(splits, kd_protocol(), cache, helper=True)
    helper.help_baselines(ipc=2)
    assert len(trained) == 2  # full data and random subsets need no distilled set
    helper.help(images, labels, None, ipc=2)
    assert len(trained) == 4 and trained[2][1:] == ("adamw", 20)  # syn-hard, then the evaluation
    trained.clear()
    shared = evaluate_synthetic(images, labels, splits, kd_protocol(), cache=cache, ipc=2)[0]
    assert trained == []
    assert shared.accuracies == plain.accuracies and shared.scores == plain.scores


def test_a_helper_skips_the_runs_another_process_holds(splits, tmp_path, trained, monkeypatch):
    images, labels = synthetic()
    cache = Cache(tmp_path)
    original = Cache.building

    @contextmanager
    def evaluation_held(self, kind, key, wait=True):
        if kind == "fits" and key.get("mode") == "teacher" and key["images"] == evaluate_mod.tensor_digest(images):
            raise Busy("the main process is training it")  # only ever raised to a helper (wait=False)
        with original(self, kind, key, wait):
            yield

    monkeypatch.setattr(Cache, "building", evaluation_held)
    Evaluator(splits, kd_protocol(), cache, helper=True).help(images, labels, None, ipc=2)
    assert len(trained) == 3 and all(optimizer == "adamw" for _, optimizer, _ in trained)
    monkeypatch.setattr(Cache, "building", original)
    trained.clear()
    evaluate_synthetic(images, labels, splits, kd_protocol(), cache=cache, ipc=2)
    assert len(trained) == 1  # only the run the helper left to its owner


def test_a_helper_run_of_the_cli_writes_nothing_and_trains_the_runs_of_the_main_run(tmp_path, monkeypatch, capsys):
    common = ["method=random", "dataset=digits", "smoke=true", "ipc=1", "eval=kd", "eval.models=[convnet]",
              "eval.num_seeds=1", "eval.epochs=2", "eval.teacher.epochs=1", "eval.full_data.epochs=1",
              "reuse_distilled=true", f"paths.records={tmp_path / 'records'}", f"paths.cache={tmp_path / 'cache'}"]
    # the main run's distilled set is already there (a helper waits for it when it is not)
    monkeypatch.setattr(sys, "argv", ["ddbench-run", *common, "write_records=false", f"hydra.run.dir={tmp_path / 'a'}"])
    run_cli.main()
    fits = sorted((tmp_path / "cache" / "fits").iterdir())
    for kind in ("fits", "baselines"):
        shutil.rmtree(tmp_path / "cache" / kind)  # as if only the set had been made so far
    monkeypatch.setattr(sys, "argv", ["ddbench-run", *common, "helper=true", f"hydra.run.dir={tmp_path / 'h'}"])
    run_cli.main()
    assert "helper:" in capsys.readouterr().out
    assert not (tmp_path / "records").exists() and not (tmp_path / "h" / "artifact").exists()
    assert sorted(p.name for p in (tmp_path / "cache" / "fits").iterdir()) == [p.name for p in fits]


def test_the_board_gives_an_idle_job_to_a_cell_with_runs_to_share():
    board = Board.from_dict({"name": "b", "dataset": "digits", "ipcs": [10], "eval_models": ["convnet"], "references": False,
                             "methods": {"random": {}, "dm": {"protocols": ["dc", "kd"]}}}, "test")
    todo, _ = cells(board)
    kd = next(c for c in todo if c.protocol == "kd")
    assert kd.shareable and not any(c.shareable for c in todo if c.protocol == "dc")
    helper_args = kd.command("/r", "/o", helper=True)
    assert "helper=true" in helper_args and "helper=true" not in kd.command("/r", "/o")
    assert any(a.startswith("hydra.run.dir=") and a.endswith("/helper") for a in helper_args)

    calls, lines = [], []

    def runner(cell, *args, helper=False, **kwargs):
        calls.append((cell.label, helper))
        from ddbench.board import CellOutcome
        return CellOutcome(cell, "failed" if helper else "done", 1.0, "helper broke" if helper else "")

    outcomes = run_board(board, "/x", read=lambda: [], runner=runner, echo=lines.append, jobs=2,
                         only=lambda c: c.method == "dm")
    assert sorted(calls) == [("dm ipc10 dc", False), ("dm ipc10 kd", False), ("dm ipc10 kd", True)]
    assert [o.status for o in outcomes] == ["done", "done"]  # a failed helper fails no cell
    assert any("its helper stopped: helper broke" in line for line in lines)


@pytest.mark.parametrize("source, trained_before_the_set", [("teacher", 2), ("stored", 2), ("artifact", 1)])
def test_before_the_set_a_helper_trains_the_baselines_its_label_source_determines(splits, tmp_path, trained, source,
                                                                                   trained_before_the_set):
    # 'artifact': the random-subset run's labels depend on the set (hard or soft), so only the full-data run
    Evaluator(splits, kd_protocol(label_source=source), Cache(tmp_path), helper=True).help_baselines(ipc=2)
    assert len(trained) == trained_before_the_set


def test_a_helper_never_distills_and_says_so_when_no_run_made_the_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [
        "ddbench-run", "method=random", "dataset=digits", "smoke=true", "ipc=1", "eval.models=[convnet]",
        "reuse_distilled=true", "helper=true", f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'h'}"])
    with pytest.raises(SystemExit) as failed:
        run_cli.main()
    assert failed.value.code == 2
    assert "without helper=true" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "distilled").exists() or not any((tmp_path / "cache" / "distilled").iterdir())
