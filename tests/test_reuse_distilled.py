"""reuse_distilled: runs that differ only in their evaluation share one distilled set through the cache."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from ddbench import pipeline, utils
from ddbench.artifact import load_artifact
from ddbench.board import Board, cells, share_distillations
from ddbench.cli import run as run_cli
from ddbench.methods import DistillResult
from ddbench.records import read_records

CPU = torch.device("cpu")
K, S = 10, 16


class CountingMethod:
    """Stands in for a method: each distill() draws new images, so a reused set is recognisable."""

    calls = 0

    def __init__(self, *args, ipc: int, **kwargs):
        self.ipc = ipc

    def distill(self):
        CountingMethod.calls += 1
        return DistillResult(torch.randn(K * self.ipc, 1, S, S), torch.arange(K).repeat_interleave(self.ipc),
                             meta={"resumed_seconds": 5.0})


@pytest.fixture
def counting(monkeypatch):
    CountingMethod.calls = 0
    monkeypatch.setattr(pipeline, "create_method", CountingMethod)
    return CountingMethod


def config(tmp_path, **changes):
    cfg = {"ipc": 1, "seed": 0, "method": {"name": "dm", "iterations": 5}, "model": {"name": "convnet", "width": 8},
           "augment": {}, "eval": {"name": "dc"}, "device": "cpu", "reuse_distilled": True,
           "paths": {"cache": str(tmp_path / "cache"), "output": str(tmp_path / "out")}}
    cfg.update(changes)
    return cfg


def test_a_second_run_with_another_protocol_reuses_the_set_and_its_distill_time(tmp_path, digits, counting):
    first, seconds = pipeline.distill(config(tmp_path), digits, CPU)
    again, again_seconds = pipeline.distill(config(tmp_path, eval={"name": "kd"}, progress=False), digits, CPU)
    assert counting.calls == 1
    assert torch.equal(first.images, again.images) and again_seconds == seconds >= 5.0
    assert again.meta["config"]["eval"] == {"name": "kd"} and "reused_from" in again.meta
    assert "reused_from" not in first.meta


def test_how_a_run_is_watched_or_checkpointed_does_not_change_its_set(tmp_path, digits, counting):
    pipeline.distill(config(tmp_path), digits, CPU)
    watched = {"name": "dm", "iterations": 5, "checkpoint_every": 100, "resume": "false", "guard_every": 7,
               "log_every": 0, "progress": False}
    pipeline.distill(config(tmp_path, method=watched), digits, CPU)
    assert counting.calls == 1


@pytest.mark.parametrize("change", [{"seed": 1}, {"ipc": 2}, {"method": {"name": "dm", "iterations": 6}},
                                    {"model": {"name": "convnet", "width": 16}}, {"reuse_distilled": False}])
def test_anything_that_changes_the_distillation_distills_again(tmp_path, digits, counting, change):
    pipeline.distill(config(tmp_path), digits, CPU)
    pipeline.distill(config(tmp_path, **change), digits, CPU)
    assert counting.calls == 2


def test_a_change_to_the_source_files_distills_again(tmp_path, digits, counting, monkeypatch):
    pipeline.distill(config(tmp_path), digits, CPU)
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "changed")
    pipeline.distill(config(tmp_path), digits, CPU)
    pipeline.distill(config(tmp_path), digits, CPU)
    assert counting.calls == 2 and len(list((tmp_path / "cache" / "distilled").iterdir())) == 2


def test_the_code_fingerprint_follows_the_source_files(tmp_path, monkeypatch):
    import importlib

    package = tmp_path / "fake_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(utils, "CODE_PACKAGES", ("fake_pkg",))
    before = utils.code_fingerprint()
    assert utils.code_fingerprint() == before
    (package / "a.py").write_text("x = 2\n")
    assert utils.code_fingerprint() != before
    assert len(before) == 16
    changed = utils.code_fingerprint()
    (package / "notes").mkdir()
    (package / "notes" / "render.py").write_text("y = 1\n")
    (package / "launch.py").write_text("z = 1\n")
    monkeypatch.setattr(utils, "CODE_BOOKKEEPING", {"fake_pkg": ("notes/", "launch.py")})
    assert utils.code_fingerprint() == changed  # bookkeeping files do not count
    (package / "more.py").write_text("w = 1\n")
    assert utils.code_fingerprint() != changed


def test_a_corrupted_cached_set_is_moved_aside_and_distilled_again(tmp_path, digits, counting, caplog):
    pipeline.distill(config(tmp_path), digits, CPU)
    (folder,) = (tmp_path / "cache" / "distilled").iterdir()
    (folder / "meta.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        again, _ = pipeline.distill(config(tmp_path), digits, CPU)
    assert counting.calls == 2 and "reused_from" not in again.meta
    assert "corrupted" in caplog.text and any(".corrupt-" in p.name for p in folder.parent.iterdir())
    assert load_artifact(folder).meta["method"] == "dm"  # stored again, readable


def test_the_run_records_that_its_set_was_reused(tmp_path, monkeypatch, capsys):
    common = ["method=dm", "dataset=digits", "smoke=true", "ipc=1", "reuse_distilled=true", "eval.num_seeds=1",
              f"paths.records={tmp_path / 'records'}", f"paths.cache={tmp_path / 'cache'}"]
    for number, extra in enumerate(([], ["eval.epochs=3"])):
        monkeypatch.setattr(sys, "argv", ["ddbench-run", *common, *extra, f"hydra.run.dir={tmp_path / str(number)}"])
        run_cli.main()
    out = capsys.readouterr().out
    assert "reused from" in out
    # both runs may finish within the same second, so tell them apart by what was asked, not by `created`
    first, second = sorted(read_records(tmp_path / "records"), key=lambda r: "eval.epochs=3" in str(r["command"]))
    assert not first["distill_reused"] and second["distill_reused"]
    assert second["distill_seconds"] == first["distill_seconds"]
    images = [load_artifact(tmp_path / str(n) / "artifact").images for n in (0, 1)]
    assert torch.equal(*images)


def test_the_board_runs_cells_that_share_a_distillation_after_the_others():
    board = Board.from_dict({
        "name": "b", "dataset": "digits", "ipcs": [10, 50], "eval_models": ["convnet"], "references": False,
        "methods": {"random": {}, "dm": {"overrides": ["method.iterations=5"], "protocols": ["dc", "kd"]}},
    }, "test")
    todo, _ = cells(board)
    assert [c.label for c in todo] == ["random ipc10 dc", "dm ipc10 dc", "dm ipc10 kd", "random ipc50 dc",
                                       "dm ipc50 dc", "dm ipc50 kd"]
    assert [c.label for c in share_distillations(todo)] == [
        "random ipc10 dc", "dm ipc10 dc", "random ipc50 dc", "dm ipc50 dc", "dm ipc10 kd", "dm ipc50 kd"]
    assert todo[1].distillation == todo[2].distillation != todo[4].distillation
    assert "reuse_distilled=true" in todo[0].command("/r", "/o")


def test_editing_a_board_does_not_change_the_code_fingerprint(tmp_path, monkeypatch):
    """A board YAML lists commands (each cell's command carries all it runs): its notes and cells can change
    without every cached distilled set and training checkpoint being made again; other config YAML counts."""
    import importlib

    conf = tmp_path / "fake_conf"
    (conf / "board").mkdir(parents=True)
    (conf / "__init__.py").write_text("")
    (conf / "method").mkdir()
    (conf / "method" / "dm.yaml").write_text("iterations: 10\n")
    (conf / "board" / "digits.yaml").write_text("name: digits\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(utils, "CODE_PACKAGES", ("fake_conf",))
    monkeypatch.setattr(utils, "CODE_BOOKKEEPING", {"fake_conf": utils.CODE_BOOKKEEPING["ddbench.conf"]})
    before = utils.code_fingerprint()
    (conf / "board" / "digits.yaml").write_text("name: digits\n# an edited note\n")
    assert utils.code_fingerprint() == before
    (conf / "method" / "dm.yaml").write_text("iterations: 20\n")
    assert utils.code_fingerprint() != before
