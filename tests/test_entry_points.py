"""One way in: the ddbench-* commands and the Python API are thin layers over the entry points of ddbench.jobs, so
they check the same things first, and the same settings give the same numbers, the same records (but for the
fields that name the caller, the moment and the folders) and the same cache keys.

Everything runs on digits with smoke settings cut further (2 epochs, smoke's 2 seeds), under temporary folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import ddbench
from ddbench import jobs, pipeline
from ddbench.artifact import Artifact, load_artifact, save_artifact
from ddbench.cli import distill as distill_cli
from ddbench.cli import evaluate as evaluate_cli
from ddbench.cli import reference as reference_cli
from ddbench.cli import run as run_cli
from ddbench.records import read_records
from ddbench.utils import DDBenchError

TINY = ["smoke=true", "eval.epochs=2", "progress=false"]
# Record fields that tell the caller, the moment or the folders apart (config: compared without its paths).
CALLER_FIELDS = {"run_id", "created", "command", "source", "images_digest", "artifact", "distill_seconds",
                 "eval_seconds", "peak_cpu_memory_bytes", "peak_gpu_memory_bytes", "config_hash", "config"}


def command(main, monkeypatch, *args: str) -> None:
    """Run a ddbench-* console script in this process, as its command line would."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["ddbench", *args])
    main()


def cache_entries(root: Path) -> list[str]:
    """The cache's files by relative path: their names are the hashes of the keys that made them."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_ddbench_run_and_the_api_run_give_the_same_numbers_records_and_cache_keys(tmp_path, monkeypatch, capsys):
    settings = ["reuse_distilled=true", *TINY]  # the distilled set's cache key is compared too
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "this code")  # a source file edited meanwhile
    cli, api = tmp_path / "cli", tmp_path / "api"
    command(run_cli.main, monkeypatch, "method=random", "dataset=digits", "ipc=1", "seed=2", "device=cpu", *settings,
            f"paths.records={cli / 'records'}", f"paths.cache={cli / 'cache'}", f"hydra.run.dir={cli / 'out'}")
    printed = capsys.readouterr().out
    (by_cli,) = read_records(cli / "records")
    assert f"artifact: {cli / 'out' / 'artifact'} (distilled in " in printed and "record: " in printed

    # a cache of its own: everything is computed again, not taken from the command's finished runs
    result = ddbench.run("random", "digits", 1, seed=2, device="cpu", records=api / "records",
                         artifact_dir=api / "artifact", overrides=[*settings, f"paths.cache={api / 'cache'}"])
    (by_api,) = read_records(api / "records")

    assert result.report.accuracies == {"convnet": by_cli["accuracies"]} and by_api["accuracies"] == by_cli["accuracies"]
    assert {k: v for k, v in by_api.items() if k not in CALLER_FIELDS} == \
        {k: v for k, v in by_cli.items() if k not in CALLER_FIELDS}
    assert {k: v for k, v in by_api["config"].items() if k != "paths"} == \
        {k: v for k, v in by_cli["config"].items() if k != "paths"}
    assert (by_cli["source"], by_api["source"]) == (None, "api")
    assert by_cli["shortened"] == by_api["shortened"] == "smoke=true, eval.epochs=2"
    assert load_artifact(by_cli["artifact"]).images.equal(load_artifact(by_api["artifact"]).images)
    assert by_cli["distill_seconds"] is not None and by_api["distill_seconds"] is not None
    assert cache_entries(cli / "cache") == cache_entries(api / "cache") != []


class Stopped(DDBenchError):
    """Raised by the spy instead of loading data."""


@pytest.fixture
def prepared(monkeypatch) -> list[str]:
    """The kinds of every jobs.prepare call, which stops there (nothing loads or trains)."""
    kinds: list[str] = []

    def stop(cfg, kind):
        kinds.append(kind)
        raise Stopped("stopped before loading data")

    monkeypatch.setattr(jobs, "prepare", stop)
    return kinds


def tiny_artifact() -> Artifact:
    meta = {"dataset": "digits", "num_classes": 10, "image_shape": [1, 16, 16], "ipc": 1, "method": "test",
            "normalization": {"kind": "meanstd", "mean": [0.3053], "std": [0.3174]}, "config": {}, "seed": 0}
    return Artifact(torch.randn(10, 1, 16, 16), torch.arange(10), meta)


def test_every_command_and_api_function_goes_in_through_jobs_prepare(prepared, tmp_path, monkeypatch, capsys):
    folder = save_artifact(tiny_artifact(), tmp_path / "artifact")
    common = ["smoke=true", f"paths.records={tmp_path / 'records'}", f"hydra.run.dir={tmp_path / 'out'}"]
    calls = {
        "run": (run_cli.main, "method=random", "dataset=digits", "ipc=1"),
        "distill": (distill_cli.main, "method=random", "dataset=digits", "ipc=1"),
        "eval": (evaluate_cli.main, f"artifact={folder}"),
        "reference": (reference_cli.main, "dataset=digits", "eval=dc"),
    }
    for main, *args in calls.values():
        with pytest.raises(SystemExit) as done:
            command(main, monkeypatch, *args, *common)
        assert done.value.code == 2
    assert capsys.readouterr().err.count("error: stopped before loading data") == len(calls)
    for call in (lambda: ddbench.distill("random", "digits", 1),
                 lambda: ddbench.run("random", "digits", 1, overrides=["smoke=true"]),
                 lambda: ddbench.evaluate(torch.rand(10, 1, 16, 16), torch.arange(10), dataset="digits")):
        with pytest.raises(Stopped):
            call()
    assert prepared == ["run", "distill", "eval", "eval", "distill", "run", "eval"]
