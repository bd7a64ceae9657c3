"""Nothing lost, nothing half-written, nothing unreadable: file modes, run folders, failures after distilling,
corrupted cache entries, interrupted writes, resumed runs, failed sweep jobs, and outputs safe for their readers."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import ddbench.training.checkpoint as checkpoint_mod
import ddbench.methods.trajectory as traj_mod
from ddbench import pipeline
from ddbench.artifact import Artifact, export_imagefolder, load_artifact, save_artifact
from ddbench.cache import Cache
from ddbench.cli import distill as distill_cli
from ddbench.cli import export as export_cli
from ddbench.cli import leaderboard as leaderboard_cli
from ddbench.cli import run as run_cli
from ddbench.data import load_dataset
from ddbench.methods import DistillResult, create_method
from ddbench.methods.experts import ExpertSpec, load_or_train_experts
from ddbench.records import make_record, write_record
from ddbench.utils import DDBenchError, atomic_write_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
K, S = 10, 16
TINY_MODEL = {"name": "convnet", "width": 8, "depth": 2}
TINY_EXPERTS = {"num_experts": 2, "epochs": 2, "batch_size": 50, "parallel": 2}


def digits_artifact() -> Artifact:
    meta = {"dataset": "digits", "num_classes": K, "image_shape": [1, S, S], "ipc": 1, "method": "test",
            "normalization": {"kind": "meanstd", "mean": [0.3053], "std": [0.3174]}, "config": {}, "seed": 0}
    return Artifact(torch.randn(K, 1, S, S), torch.arange(K), meta)


def record(**changes) -> dict:
    fields = dict(run_id="r1", method="dm", dataset="digits", ipc=1, label_type="hard", protocol="dc",
                  eval_model="convnet", accuracies=[0.5, 0.6], seeds=[0, 1], distill_seconds=1.0, eval_seconds=1.0,
                  peak_gpu_memory_bytes=None, device="cpu", config={}, seed=0, artifact=None)
    fields.update(changes)
    return make_record(**fields)


def hydra_cli(main, monkeypatch, *args: str) -> int:
    """Run a Hydra console script in this process; its exit code (0 when it returns)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["ddbench", *args])
    try:
        main()
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# ------------------------------------------------------------------------------------------ file modes


def test_written_files_and_folders_honour_the_umask(tmp_path, umask_022):
    """Records, caches, exports and artifacts get 0644 files and 0755 folders under umask 022 (not 0600/0700)."""

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(atomic_write_bytes(tmp_path / "page.html", b"<html>")) == 0o644
    assert mode(write_record(record(), tmp_path / "records")) == 0o644
    assert mode(Cache(tmp_path / "cache").save("embeddings", {"k": 1}, {"x": torch.zeros(2)})) == 0o644
    folder = save_artifact(digits_artifact(), tmp_path / "artifact")
    assert mode(folder) == 0o755 and mode(folder / "meta.json") == 0o644 and mode(folder / "tensors.safetensors") == 0o644
    exported = export_imagefolder(digits_artifact(), tmp_path / "images")
    assert mode(exported) == 0o755 and mode(exported / "00000") == 0o755 and mode(exported / "00000" / "00000.png") == 0o644
    os.umask(0o002)  # a team's shared folder
    assert mode(atomic_write_bytes(tmp_path / "shared.csv", b"a")) == 0o664


# ------------------------------------------------------------------------------------------ run folders


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ("method=random", "dataset=digits", "smoke=true", "ipc=1", f"paths.cache={tmp_path / 'cache'}")
    for seed in (0, 1, 1):
        assert hydra_cli(distill_cli.main, monkeypatch, *base, f"seed={seed}") == 0
    folders = sorted(tmp_path.glob("outputs/*/*/artifact"))
    assert len(folders) == 3, folders
    assert sorted(load_artifact(f).meta["seed"] for f in folders) == [0, 1, 1]
    assert all(f"_seed{load_artifact(f).meta['seed']}_" in f.parent.name for f in folders)


# ------------------------------------------------------------------------------------------ failures


def test_an_unwritable_records_folder_stops_the_run_before_any_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    def no_loading(*args, **kwargs):
        raise AssertionError("data were loaded although the run could never be recorded")

    monkeypatch.setattr(pipeline, "load_splits", no_loading)
    code = hydra_cli(run_cli.main, monkeypatch, "method=random", "dataset=digits", "smoke=true", "ipc=1",
                     f"paths.records={blocker}/records", f"paths.cache={tmp_path / 'cache'}",
                     f"hydra.run.dir={tmp_path / 'out'}")
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "paths.records" in error_lines(err)[0], err
    assert not (tmp_path / "out" / "artifact").exists()


def test_a_failure_after_distilling_keeps_the_artifact_and_says_how_to_evaluate_it(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise DDBenchError("the evaluator ran out of memory; lower eval.batch_size.")

    monkeypatch.setattr(pipeline, "evaluate", broken)
    out = tmp_path / "out"
    code = hydra_cli(run_cli.main, monkeypatch, "method=random", "dataset=digits", "smoke=true", "ipc=1",
                     f"paths.records={tmp_path / 'records'}", f"paths.cache={tmp_path / 'cache'}",
                     f"hydra.run.dir={out}")
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "eval.batch_size" in lines[0] and f"ddbench-eval artifact={out / 'artifact'}" in lines[0], err
    assert load_artifact(out / "artifact").meta["method"] == "random"
    assert not (tmp_path / "records").exists()


def test_a_sweep_with_failed_jobs_exits_nonzero_and_lists_them(tmp_path, monkeypatch, capsys):
    code = hydra_cli(distill_cli.main, monkeypatch, "-m", "method=random", "dataset=digits", "smoke=true",
                     "ipc=1,100000,2", f"paths.cache={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "error: 1 sweep job(s) failed:" in err
    listed = err.split("sweep job(s) failed:", 1)[1]
    assert "job 1 " in listed and "ipc=100000" in listed and "138" in listed, err
    assert len(list((tmp_path / "sweep").glob("*/artifact/meta.json"))) == 2  # the other jobs went on


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path):
    """A cluster's time limit (SIGTERM) in the middle of an atomic write leaves neither the file nor its temp."""
    script = f"""
import os, time
import ddbench.utils as utils
from ddbench.cli.app import run_cli
def slow_fsync(fd):
    open({str(tmp_path / 'writing')!r}, 'w').close()
    time.sleep(60)
utils.os.fsync = slow_fsync
run_cli(lambda: utils.atomic_write_bytes({str(tmp_path / 'out' / 'record.json')!r}, b'{{}}'))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "writing").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------------ the cache


def test_a_corrupted_cache_entry_is_named_set_aside_and_recomputed(tmp_path, caplog):
    cache = Cache(tmp_path)
    key = {"what": "embeddings"}
    path = cache.save("embeddings", key, {"features": torch.ones(3)})
    path.write_bytes(path.read_bytes()[:20])  # a truncated file (a full disk, a killed copy)
    built = []

    def build():
        built.append(1)
        return {"features": torch.full((3,), 2.0)}

    with caplog.at_level(logging.WARNING, logger="ddbench.cache"):
        found = cache.get_or_create("embeddings", key, build, required=("features",))
    assert built == [1] and torch.equal(found["features"], torch.full((3,), 2.0))
    assert str(path) in caplog.text and "corrupted" in caplog.text
    aside = list(tmp_path.glob("embeddings/*.corrupt-*"))
    assert len(aside) == 1 and "moved aside to" in caplog.text and str(aside[0]) in caplog.text
    assert torch.equal(cache.load("embeddings", key)["features"], torch.full((3,), 2.0))
    # an entry that reads but lacks what its user needs (e.g. a teacher without its weights) is set aside too
    cache.save("teachers", key, {"other": torch.ones(1)})
    assert cache.get_or_create("teachers", key, build, required=("features",))["features"].sum() == 6


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", max_train_per_class=20, max_test_per_class=5)


def test_a_corrupted_expert_is_retrained(splits, tmp_path, expert_groups):
    cache = Cache(tmp_path)
    spec = ExpertSpec(**TINY_EXPERTS)
    first = load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, cache)
    files = sorted((tmp_path / "experts").glob("*.safetensors"))
    assert len(files) == 2
    files[0].write_bytes(b"\x00" * 16)
    del expert_groups[:]
    again = load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, cache)
    assert len(expert_groups) == 1 and len(expert_groups[0]) == 1  # only the corrupted expert
    torch.testing.assert_close(again, first)


# ------------------------------------------------------------------------------------------ resumed runs


def test_a_resumed_run_counts_the_time_of_all_its_parts(splits, tmp_path, monkeypatch):
    clock = {"now": 0.0}

    def tick() -> float:
        clock["now"] += 10.0
        return clock["now"]

    monkeypatch.setattr(checkpoint_mod.time, "perf_counter", tick)
    options = {"experts": dict(TINY_EXPERTS), "iterations": 4, "syn_steps": 3, "expert_epochs": 1,
               "max_start_epoch": 2, "lr_img": 10.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "checkpoint_every": 2,
               "guard_every": 1, "log_every": 0}

    def make():
        return create_method("mtt", splits=splits, ipc=1, seed=0, device=CPU, options=dict(options),
                             model=TINY_MODEL, augment={"enabled": True}, cache=Cache(tmp_path))

    class Killed(Exception):
        pass

    original, calls = traj_mod.sample_rows, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside iteration 3, after the checkpoint at 2
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(traj_mod, "sample_rows", dies)
    with pytest.raises(Killed):
        make().distill()
    monkeypatch.setattr(traj_mod, "sample_rows", original)
    resumed = make().distill()
    assert resumed.meta["resumed_seconds"] >= 10.0  # the first part's time, as stored in its checkpoint

    class Resumed:
        def distill(self):
            return DistillResult(torch.randn(K, 1, S, S), torch.arange(K), meta={"resumed_seconds": 1000.0})

    monkeypatch.setattr(pipeline, "create_method", lambda *args, **kwargs: Resumed())
    cfg = {"ipc": 1, "seed": 0, "method": {"name": "mtt"}, "model": TINY_MODEL, "augment": {},
           "paths": {"cache": str(tmp_path), "output": str(tmp_path)}}
    artifact, seconds = pipeline.distill(cfg, splits, CPU)
    assert seconds >= 1000.0 and artifact.meta["distill_seconds"] == seconds


# ------------------------------------------------------------------------------------------ outputs


def hostile_records(folder: Path) -> Path:
    write_record(record(run_id="a", method='<img src=x onerror="alert(1)">'), folder)
    write_record(record(run_id="b", method='=HYPERLINK("http://x","y")', command="+cmd|' /C calc'!A0"), folder)
    return folder


def test_markdown_escapes_html_and_csv_neutralises_formulas(tmp_path, capsys):
    folder = hostile_records(tmp_path / "records")
    assert leaderboard_cli.main(["--records", str(folder)]) == 0
    markdown = capsys.readouterr().out
    assert "<img" not in markdown and "&lt;img" in markdown
    assert leaderboard_cli.main(["--records", str(folder), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["method"]) == {"'=HYPERLINK(\"http://x\",\"y\")", '<img src=x onerror="alert(1)">'}
    assert all(not str(v).startswith(("=", "+", "-", "@")) for col in frame for v in frame[col] if isinstance(v, str))


def test_lenient_skips_a_record_whose_scores_are_not_numbers(tmp_path, capsys):
    folder = tmp_path / "records"
    write_record(record(), folder)
    bad = record(run_id="bad")
    bad["scores"] = {"hlr": "high"}
    (folder / "bad.json").write_text(json.dumps(bad))
    assert leaderboard_cli.main(["--records", str(folder), "--format", "csv", "--lenient"]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 1
    assert leaderboard_cli.main(["--records", str(folder)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "bad.json" in line and "scores" in line and "--lenient" in line


def test_export_overwrites_only_with_force(tmp_path, capsys):
    source = save_artifact(digits_artifact(), tmp_path / "artifact")
    out = tmp_path / "set.npz"
    out.write_bytes(b"precious")
    assert export_cli.main([str(source), "--format", "npz", "--out", str(out)]) == 2
    assert out.read_bytes() == b"precious" and "--force" in capsys.readouterr().err
    assert export_cli.main([str(source), "--format", "npz", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
