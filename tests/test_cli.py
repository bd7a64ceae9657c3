"""End to end through the installed console scripts (the configs themselves are checked in test_config.py).

Each subprocess pays several seconds of imports, so the runs are few, started together (they are independent),
and every test asserts several things about one run. Every run writes only under a temporary folder
(paths.records, paths.cache, hydra.run.dir, cwd and the wandb folders).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch

from ddbench.artifact import load_artifact
from ddbench.records import read_records

BIN = Path(sys.executable).parent  # the console scripts of the environment running the tests
TIMEOUT = 600
BASELINES = ("random", "herding", "kcenter", "dm")


# ------------------------------------------------------------------------------------------ subprocess runs


@dataclass
class Run:
    """One console-script invocation with its own folder: <root>/{records,cache,out}, stdout/stderr files."""

    root: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    starter: threading.Thread | None = field(default=None, repr=False)

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def start(self) -> "Run":
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "stdout.txt", "wb") as out, open(self.root / "stderr.txt", "wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=out, stderr=err)
        return self

    def start_after(self, first: "Run") -> "Run":
        """Start as soon as `first` has finished successfully (in a background thread)."""

        def go() -> None:
            first.proc.wait()
            if first.proc.returncode == 0:
                self.start()

        self.starter = threading.Thread(target=go, daemon=True)
        self.starter.start()
        return self

    def wait(self) -> "Run":
        if self.starter is not None:
            self.starter.join(TIMEOUT)
        if self.returncode is None:
            assert self.proc is not None, f"{' '.join(self.args)} was never started (its predecessor failed)"
            self.returncode = self.proc.wait(timeout=TIMEOUT)
            self.stdout = (self.root / "stdout.txt").read_text(errors="replace")
            self.stderr = (self.root / "stderr.txt").read_text(errors="replace")
        return self

    def explain(self) -> str:
        return (f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def subprocess_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(
        OMP_NUM_THREADS="1",  # the runs share the CPU cores
        XDG_CACHE_HOME=str(base / "xdg-cache"),
        WANDB_CONFIG_DIR=str(base / "wandb-config"),
        WANDB_CACHE_DIR=str(base / "wandb-cache"),
        WANDB_DATA_DIR=str(base / "wandb-data"),
        WANDB_SILENT="true",
    )
    return env


def tool_path(tool: str) -> str:
    found = BIN / tool
    return str(found) if found.is_file() else (shutil.which(tool) or tool)


def make_run(base: Path, name: str, tool: str, *overrides: str, hydra: bool = True) -> Run:
    root = base / name
    args = [tool_path(tool), *overrides]
    if hydra:
        args += [f"paths.records={root / 'records'}", f"paths.cache={root / 'cache'}", f"hydra.run.dir={root / 'out'}"]
    return Run(root, args, subprocess_env(base))


def write_reference_folder(folder: Path, ipc: int = 1) -> Path:
    """images_best.pt / labels_best.pt as the trajectory-matching repos write them, for digits."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randn(10 * ipc, 1, 16, 16, generator=gen), folder / "images_best.pt")
    torch.save(torch.arange(10).repeat_interleave(ipc), folder / "labels_best.pt")
    return folder


# Runs that check plumbing rather than numbers train the evaluator's networks for one epoch with one seed.
QUICK_EVAL = ("smoke_settings.eval.num_seeds=1", "smoke_settings.eval.epochs=1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """The independent runs, started at once; each test waits for the one it checks."""
    base = tmp_path_factory.mktemp("cli")
    reference = write_reference_folder(base / "reference")
    started = {
        # the smoke contract; logger=wandb with mode=disabled must behave exactly like no logger
        "dm": make_run(base, "dm", "ddbench-run", "method=dm", "dataset=digits", "ipc=1", "smoke=true",
                       "logger=wandb", "logger.mode=disabled"),
        "distill": make_run(base, "distill", "ddbench-distill", "method=random", "dataset=digits", "ipc=2",
                            "smoke=true"),
        "eval_reference_no_dataset": make_run(base, "eval_ref_nodata", "ddbench-eval", f"artifact={reference}",
                                              "smoke=true"),
        "eval_reference": make_run(base, "eval_ref", "ddbench-eval", f"artifact={reference}", "dataset=digits",
                                   "smoke=true", *QUICK_EVAL),
        "unknown_method": make_run(base, "nope", "ddbench-run", "method=nope"),
        "ipc0": make_run(base, "ipc0", "ddbench-run", "method=random", "dataset=digits", "ipc=0", "smoke=true"),
    }
    # The sweep narrows the distillation model and the evaluator further: it checks the sweep machinery.
    sweep = make_run(base, "sweep", "ddbench-run", "-m", "method=random,herding,kcenter,dm", "dataset=digits",
                     "ipc=1,10", "smoke=true", "model.width=16", *QUICK_EVAL, "progress=false", hydra=False)
    sweep.args += [f"paths.records={sweep.records}", f"paths.cache={sweep.root / 'cache'}",
                   f"hydra.sweep.dir={sweep.out}"]
    started["sweep"] = sweep
    # SLURM goes through Hydra's submitit launcher; its local executor runs the same path on this machine
    # (two methods; the ipc=5000 jobs fail before any work, so the sweep lists them and exits 1)
    submitit = make_run(base, "submitit", "ddbench-run", "-m", "hydra/launcher=submitit_local",
                        "hydra.launcher.timeout_min=10", "method=random,herding", "dataset=digits", "ipc=1,5000",
                        "smoke=true", *QUICK_EVAL, "progress=false", hydra=False)
    submitit.args += [f"paths.records={submitit.records}", f"paths.cache={submitit.root / 'cache'}",
                      f"hydra.sweep.dir={submitit.out}"]
    started["submitit"] = submitit
    try:
        import wandb  # noqa: F401

        started["wandb_offline"] = make_run(base, "wandb", "ddbench-run", "method=random", "dataset=digits", "ipc=1",
                                            "smoke=true", "logger=wandb", "logger.mode=offline", *QUICK_EVAL)
    except Exception:  # noqa: BLE001 - any import failure means: no wandb test
        pass
    for run in started.values():
        run.start()
    dm = started["dm"]
    started["eval_dm"] = make_run(base, "eval_dm", "ddbench-eval", f"artifact={dm.out / 'artifact'}", "smoke=true",
                                  *QUICK_EVAL)
    started["eval_dm"].start_after(dm)
    yield started
    for run in started.values():
        if run.starter is not None:
            run.starter.join(TIMEOUT)
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def single_record(run: Run) -> dict:
    records = read_records(run.records)
    assert len(records) == 1, run.explain()
    return records[0]


# -------------------------------------------------------------------------------------------- ddbench-run


def test_run_dm_smoke_writes_record_artifact_and_summary(runs):
    run = runs["dm"].wait()
    assert run.returncode == 0, run.explain()
    summary = [line for line in run.stdout.splitlines() if line.startswith("dm | digits | ipc 1 |")]
    assert len(summary) == 1, run.explain()
    assert "| convnet | hard labels |" in summary[0] and " % (2 seeds" in summary[0]

    record = single_record(run)
    assert (record["method"], record["dataset"], record["ipc"], record["label_type"]) == ("dm", "digits", 1, "hard")
    assert record["eval_model"] == "convnet" and len(record["accuracies"]) == 2
    assert all(0 <= a <= 1 for a in record["accuracies"])
    shown = re.search(r"\| ([0-9.]+) ± ([0-9.]+) %", summary[0])
    assert shown and abs(float(shown.group(1)) - 100 * record["mean"]) < 0.01, summary[0]
    assert record["command"].startswith("ddbench-run method=dm")
    assert record["peak_gpu_memory_bytes"] is None and 2**20 < record["peak_cpu_memory_bytes"] < 2**40  # max RSS on CPU

    artifact_dir = run.out / "artifact"
    assert Path(record["artifact"]) == artifact_dir
    artifact = load_artifact(artifact_dir)
    assert (artifact.dataset, artifact.ipc, artifact.meta["method"], artifact.label_type) == ("digits", 1, "dm", "hard")
    assert artifact.images.shape == (10, 1, 16, 16) and bool(torch.isfinite(artifact.images).all())
    assert artifact.meta["config"]["smoke"] is True
    assert artifact.meta["config"]["method"]["iterations"] == 10  # the smoke block was applied
    from ddbench.utils import tensor_digest

    assert record["images_digest"] == tensor_digest(artifact.training_set()[0])  # names the set it evaluated
    assert f"artifact: {artifact_dir}" in run.stdout


def test_wandb_disabled_runs_without_a_wandb_folder(runs):
    run = runs["dm"].wait()
    assert run.returncode == 0, run.explain()
    assert not (run.out / "wandb").exists()
    assert not any(run.root.rglob("offline-run-*"))


def test_wandb_offline_writes_and_finishes_a_run(runs):
    if "wandb_offline" not in runs:
        pytest.skip("wandb is not importable")
    run = runs["wandb_offline"].wait()
    assert run.returncode == 0, run.explain()
    folders = list((run.out / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, run.explain()
    assert any(p.stat().st_size > 0 for p in folders[0].glob("run-*.wandb"))
    debug_log = (folders[0] / "logs" / "debug.log").read_text(errors="replace")
    assert "finishing run" in debug_log
    assert len(read_records(run.records)) == 1


def test_distill_writes_only_an_artifact(runs):
    run = runs["distill"].wait()
    assert run.returncode == 0, run.explain()
    artifact = load_artifact(run.out / "artifact")
    assert (artifact.meta["method"], artifact.ipc, artifact.dataset) == ("random", 2, "digits")
    assert torch.equal(artifact.labels, torch.arange(10).repeat_interleave(2))
    assert not run.records.exists() or not any(run.records.rglob("*.json"))
    assert "record:" not in run.stdout


# ----------------------------------------------------------------------------------------------- bad input


def test_unknown_method_lists_the_valid_options(runs):
    run = runs["unknown_method"].wait()
    assert run.returncode == 2, run.explain()
    errors = run.error_lines()
    assert len(errors) == 1 and "method/nope" in errors[0], run.explain()
    listed = errors[0].split("Available options in 'method':", 1)[1]
    for name in BASELINES:
        assert name in listed, run.explain()
    assert "Traceback" not in run.stdout + run.stderr


def test_ipc_zero_exits_2_with_one_clear_line(runs):
    run = runs["ipc0"].wait()
    assert run.returncode == 2, run.explain()
    assert run.error_lines() == ["error: ipc must be an int >= 1, got 0; e.g. ipc=1."], run.explain()
    assert "Traceback" not in run.stderr
    assert not run.records.exists()


# ------------------------------------------------------------------------------------------- ddbench-eval


def test_eval_reference_folder_needs_a_dataset(runs):
    run = runs["eval_reference_no_dataset"].wait()
    assert run.returncode == 2, run.explain()
    errors = run.error_lines()
    assert len(errors) == 1 and "dataset=NAME" in errors[0], run.explain()
    assert "\n" not in errors[0] and "Traceback" not in run.stderr
    assert not run.records.exists()


def test_eval_reference_folder_with_dataset(runs):
    run = runs["eval_reference"].wait()
    assert run.returncode == 0, run.explain()
    record = single_record(run)
    assert (record["method"], record["dataset"], record["ipc"]) == ("imported", "digits", 1)
    assert record["artifact"] == str(Path(run.args[1].split("=", 1)[1]).resolve())  # the evaluated folder
    assert "imported | digits | ipc 1 |" in run.stdout


def test_eval_artifact_takes_the_dataset_from_the_artifact(runs):
    dm = runs["dm"].wait()
    assert dm.returncode == 0, dm.explain()
    run = runs["eval_dm"].wait()
    assert run.returncode == 0, run.explain()
    record = single_record(run)
    # ipc and method come from the artifact (the config's defaults are ipc=10), dataset too
    assert (record["method"], record["dataset"], record["ipc"]) == ("dm", "digits", 1)
    assert record["command"].startswith("ddbench-eval artifact=")
    assert record["artifact"] == str((dm.out / "artifact").resolve())
    assert "dm | digits | ipc 1 |" in run.stdout


# ----------------------------------------------------------------------------------------- sweep (-m)


def test_sweep_writes_one_record_per_job_and_the_leaderboard_shows_them(runs):
    sweep = runs["sweep"].wait()
    assert sweep.returncode == 0, sweep.explain()
    assert "job failed" not in sweep.stdout + sweep.stderr, sweep.explain()

    records = read_records(sweep.records)
    assert sorted((r["method"], r["ipc"]) for r in records) == sorted(
        (m, ipc) for m in BASELINES for ipc in (1, 10)
    ), sweep.explain()
    assert len({r["run_id"] for r in records}) == 8
    assert len(list(sweep.out.glob("*/artifact/meta.json"))) == 8
    # herding and k-center share one embedding network: trained once, then reused (and the log says so)
    assert len(list((sweep.root / "cache" / "embeddings").glob("*.safetensors"))) == 1
    assert "reusing cached embeddings" in sweep.stdout + sweep.stderr

    # smoke runs are marked shortened: off the default board, shown labelled on request
    assert all(r["shortened"] and "smoke=true" in r["shortened"] for r in records)
    board = subprocess.run([tool_path("ddbench-leaderboard"), "--records", str(sweep.records), "--format", "csv",
                            "--include-shortened"],
                           cwd=sweep.root, env=sweep.env, capture_output=True, text=True, timeout=TIMEOUT)
    assert board.returncode == 0, board.stderr
    frame = pd.read_csv(io.StringIO(board.stdout))
    assert frame["method"].str.contains(r"\[smoke=true").all()
    methods = frame["method"].str.split(" ").str[0]
    assert sorted(zip(methods, frame["ipc"])) == sorted((m, ipc) for m in BASELINES for ipc in (1, 10))
    assert set(frame["dataset"]) == {"digits"} and (frame["n_seeds"] == 1).all()


def test_submitit_local_sweep_runs_each_job_through_submitit_and_lists_the_failed_ones(runs):
    sweep = runs["submitit"].wait()
    assert sweep.returncode == 1, sweep.explain()  # two jobs failed: the sweep says so
    assert "error: 2 sweep job(s) failed:" in sweep.stderr, sweep.explain()
    assert sweep.stderr.count("ipc=5000") >= 2 and "use ipc <= 138" in sweep.stderr, sweep.explain()
    records = read_records(sweep.records)
    assert sorted(r["method"] for r in records) == ["herding", "random"], sweep.explain()
    artifacts = {r["artifact"] for r in records}
    assert len(artifacts) == 2 and all(Path(a).parent.parent == sweep.out for a in artifacts)
    assert sorted(load_artifact(a).meta["method"] for a in artifacts) == ["herding", "random"]  # its own artifact
    assert len(list((sweep.out / ".submitit").rglob("*_result.pkl"))) == 4  # every job ran as a submitit job


def test_record_json_is_plain(runs):
    """Records are plain JSON files named by dataset/method (readable without ddbench)."""
    run = runs["dm"].wait()
    files = list(run.records.rglob("*.json"))
    assert len(files) == 1 and files[0].parent == run.records / "digits" / "dm"
    assert json.loads(files[0].read_text())["method"] == "dm"
