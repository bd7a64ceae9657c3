"""Result records: schema validation, atomic storage, leaderboard aggregation and its CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import ddbench.records.schema as schema
from ddbench.cli.leaderboard import main as leaderboard_main
from ddbench.records import (
    leaderboard_frame,
    make_record,
    read_records,
    render_csv,
    render_markdown,
    validate_record,
    write_record,
)
from ddbench.utils import DDBenchError


@pytest.fixture(autouse=True)
def _fixed_provenance(monkeypatch):
    # Keep records independent of the checkout and of installed library versions.
    monkeypatch.setattr(schema, "git_commit", lambda: "abc1234")
    monkeypatch.setattr(schema, "versions", lambda: {"ddbench": "0.1.0", "torch": "2.x"})


def fields(**overrides):
    base = dict(
        run_id="run-a",
        method="dc",
        dataset="cifar10",
        ipc=10,
        label_type="hard",
        protocol="dc",
        eval_model="convnet",
        accuracies=[0.44, 0.45, 0.46],
        seeds=[0, 1, 2],
        distill_seconds=12.5,
        eval_seconds=3.0,
        peak_gpu_memory_bytes=None,
        device="cpu",
        config={"method": {"name": "dc"}, "ipc": 10},
        artifact=None,
        seed=0,
    )
    base.update(overrides)
    return base


def rec(**overrides):
    return make_record(**fields(**overrides))


# --- make / validate -------------------------------------------------------------------------


def test_make_record_fills_bookkeeping_fields():
    r = rec()
    assert r["schema_version"] == 1
    assert r["git_commit"] == "abc1234"
    assert r["versions"]["ddbench"] == "0.1.0"
    assert r["mean"] == pytest.approx(np.mean([0.44, 0.45, 0.46]))
    assert r["std"] == pytest.approx(np.std([0.44, 0.45, 0.46], ddof=0))
    assert r["scores"] == {} and r["command"] is None
    assert isinstance(r["config_hash"], str) and r["config_hash"]
    schema.parse_time(r["created"])  # a parseable ISO timestamp


def error_of(obj):
    with pytest.raises(DDBenchError) as info:
        validate_record(obj, source="some/file.json")
    return str(info.value)


def test_missing_field_is_named():
    r = rec()
    del r["eval_model"]
    msg = error_of(r)
    assert "some/file.json" in msg and "'eval_model'" in msg and "missing" in msg


def test_percent_accuracy_is_rejected_with_a_hint():
    r = rec()
    r["accuracies"] = [87, 0.88, 0.89]
    msg = error_of(r)
    assert "'accuracies'" in msg and "fractions in [0, 1]" in msg and "0.87" in msg


def test_make_record_rejects_percentages_too():
    with pytest.raises(DDBenchError, match=r"fractions in \[0, 1\]"):
        rec(accuracies=[87.0, 88.0, 89.0])


def test_mean_disagreeing_with_accuracies():
    r = rec()
    r["mean"] = r["mean"] + 0.01
    msg = error_of(r)
    assert "'mean'" in msg and "mean of accuracies" in msg
    r = rec()
    r["std"] = float(np.std(r["accuracies"], ddof=1))  # sample std is not what the schema stores
    assert "'std'" in error_of(r)


def test_bad_label_type_and_types():
    r = rec()
    r["label_type"] = "fuzzy"
    msg = error_of(r)
    assert "'label_type'" in msg and "'hard'" in msg and "'soft'" in msg
    r = rec()
    r["ipc"] = "10"
    assert "'ipc'" in error_of(r)
    r = rec()
    r["ipc"] = 0
    assert "'ipc'" in error_of(r)
    r = rec()
    r["seeds"] = [0, 1]
    assert "'seeds'" in error_of(r)
    r = rec()
    r["accuracies"] = []
    assert "non-empty" in error_of(r)
    r = rec()
    r["surprise"] = 1
    assert "'surprise'" in error_of(r)


# --- store -----------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    r = rec(command="ddbench-run method=dc ipc=10")
    path = write_record(r, tmp_path)
    assert path == tmp_path / "cifar10" / "dc" / "cifar10_dc_ipc10_dc_convnet_run-a.json"
    assert read_records(tmp_path) == [r]


def test_atomic_write_leaves_no_temp_files_and_run_ids_do_not_collide(tmp_path):
    p1 = write_record(rec(run_id="run-a"), tmp_path)
    p2 = write_record(rec(run_id="run-b"), tmp_path)
    assert p1 != p2
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted([p1, p2])  # no leftover temporary files
    assert len(read_records(tmp_path)) == 2


def test_names_are_sanitized(tmp_path):
    path = write_record(rec(method="my method/v2", eval_model="timm:resnet18", run_id="a b"), tmp_path)
    assert path.relative_to(tmp_path).parts[:2] == ("cifar10", "my_method_v2")
    assert path.name == "cifar10_my_method_v2_ipc10_dc_timm_resnet18_a_b.json"


def test_missing_folder_says_where_records_go(tmp_path):
    with pytest.raises(DDBenchError, match=r"paths\.records=DIR"):
        read_records(tmp_path / "nope")


def test_corrupt_file_strict_and_lenient(tmp_path, caplog):
    good = write_record(rec(), tmp_path)
    bad = tmp_path / "cifar10" / "dc" / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DDBenchError) as info:
        read_records(tmp_path)
    assert "broken.json" in str(info.value)
    with caplog.at_level(logging.WARNING):
        got = read_records(tmp_path, strict=False)
    assert len(got) == 1 and got[0]["run_id"] == "run-a"
    assert "broken.json" in caplog.text
    # An invalid (but well-formed) record names the file as well.
    bad.write_text(json.dumps({**json.loads(good.read_text()), "ipc": 0}))
    with pytest.raises(DDBenchError, match="broken.json"):
        read_records(tmp_path)


# --- leaderboard -----------------------------------------------------------------------------


def hand_made_records():
    return [
        rec(run_id="r1", accuracies=[0.50, 0.52], seeds=[0, 1], created="2024-01-01T00:00:00+00:00",
            git_commit="old", command="cmd-old", distill_seconds=10.0, eval_seconds=2.0),
        rec(run_id="r2", accuracies=[0.55, 0.49, 0.51], seeds=[2, 3, 4], created="2024-02-01T00:00:00+00:00",
            git_commit="new", command="cmd-new", distill_seconds=None, eval_seconds=4.0),
        rec(run_id="r3", ipc=1, accuracies=[0.28], seeds=[0]),
        rec(run_id="r4", method="dm", accuracies=[0.48, 0.49], seeds=[0, 1]),
        rec(run_id="r1", eval_model="resnet18", accuracies=[0.40, 0.42], seeds=[0, 1]),
    ]


def test_records_carry_peak_cpu_memory_and_cells_show_the_largest():
    assert rec()["peak_cpu_memory_bytes"] is None  # optional: older records stay valid
    with pytest.raises(DDBenchError, match="peak_cpu_memory_bytes"):
        rec(peak_cpu_memory_bytes=-1)
    runs = [rec(run_id="a", peak_cpu_memory_bytes=2**30, peak_gpu_memory_bytes=5), rec(run_id="b", peak_cpu_memory_bytes=3 * 2**30),
            rec(run_id="c", ipc=1)]
    frame = leaderboard_frame(runs)
    ten, one = frame[frame.ipc == 10].iloc[0], frame[frame.ipc == 1].iloc[0]
    assert ten["peak_cpu_memory_bytes"] == 3 * 2**30 and ten["peak_gpu_memory_bytes"] == 5
    assert np.isnan(one["peak_cpu_memory_bytes"]) and np.isnan(one["peak_gpu_memory_bytes"])


def test_runs_of_one_cell_pool_their_seeds():
    frame = leaderboard_frame(hand_made_records())
    assert len(frame) == 4
    cell = frame[(frame.method == "dc") & (frame.ipc == 10) & (frame.eval_model == "convnet")].iloc[0]
    pooled = [0.50, 0.52, 0.55, 0.49, 0.51]
    assert cell["mean"] == pytest.approx(np.mean(pooled), abs=1e-12)
    assert cell["std"] == pytest.approx(np.std(pooled), abs=1e-12)
    assert cell["n_seeds"] == 5 and cell["n_runs"] == 2
    assert cell["distill_seconds"] == pytest.approx(10.0)
    assert cell["eval_seconds"] == pytest.approx(3.0)
    assert cell["git_commit"] == "new" and cell["command"] == "cmd-new"
    # Sorted by method name, then IPC numerically, ConvNet before other eval models.
    assert list(zip(frame.method, frame.ipc, frame.eval_model)) == [
        ("dc", 1, "convnet"), ("dc", 10, "convnet"), ("dc", 10, "resnet18"), ("dm", 10, "convnet"),
    ]


def test_markdown_cells_and_tables():
    records = hand_made_records() + [rec(run_id="r5", ipc=2, accuracies=[0.3], seeds=[0])]
    text = render_markdown(leaderboard_frame(records))
    pooled = [0.50, 0.52, 0.55, 0.49, 0.51]
    cell = f"{np.mean(pooled) * 100:.2f} ± {np.std(pooled) * 100:.2f} (n=5)"
    assert cell == "51.40 ± 2.06 (n=5)"
    assert "## cifar10 · protocol `dc`" in text
    assert "| Method | Labels | IPC 1 | IPC 2 | IPC 10 |" in text  # IPC sorted numerically
    assert f"| dc | hard | 28.00 ± 0.00 (n=1) | 30.00 ± 0.00 (n=1) | {cell} |" in text
    assert "| dm | hard | — | — | 48.50 ± 0.50 (n=2) |" in text
    assert "| Method | Labels | IPC | convnet | resnet18 |" in text
    assert f"| dc | hard | 10 | {cell} | 41.00 ± 1.00 (n=2) |" in text
    cross = text.split("Cross-architecture")[1]
    assert cross.index("| dc | hard | 10 |") < cross.index("| dm | hard | 10 |")
    assert "| dc | hard | 1 |" not in cross  # IPCs evaluated on ConvNet only are not repeated there
    assert "| dm | hard | 10 | 48.50 ± 0.50 (n=2) | — |" in cross  # not run on resnet18: missing, never 0


def test_csv_and_empty_leaderboard():
    csv = render_csv(leaderboard_frame(hand_made_records()))
    header = csv.splitlines()[0].split(",")
    assert header[:8] == ["dataset", "protocol", "label_type", "method", "ipc", "eval_model", "mean", "std"]
    assert len(csv.splitlines()) == 5
    assert "No records" in render_markdown(leaderboard_frame([]))


# --- CLI -------------------------------------------------------------------------------------


def test_cli_prints_markdown_and_writes_csv(tmp_path, capsys):
    for r in hand_made_records():
        write_record(r, tmp_path / "records")
    assert leaderboard_main(["--records", str(tmp_path / "records")]) == 0
    out = capsys.readouterr().out
    assert "51.40 ± 2.06 (n=5)" in out
    target = tmp_path / "out" / "board.csv"
    assert leaderboard_main(["--records", str(tmp_path / "records"), "--format", "csv", "--out", str(target)]) == 0
    assert target.read_text().startswith("dataset,protocol,label_type,method,ipc,eval_model")
    assert [p.name for p in target.parent.iterdir()] == ["board.csv"]


def test_cli_missing_folder_exits_2_without_traceback(tmp_path, capsys):
    assert leaderboard_main(["--records", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "paths.records=DIR" in err
    assert "Traceback" not in err


def test_shortened_runs_stay_off_the_default_board_and_show_labelled_on_request(tmp_path, capsys):
    write_record(rec(run_id="full", accuracies=[0.5, 0.5, 0.5]), tmp_path / "records")
    write_record(rec(run_id="smoke", method="dm", shortened="smoke=true"), tmp_path / "records")
    assert leaderboard_main(["--records", str(tmp_path / "records")]) == 0
    out = capsys.readouterr().out
    assert "| dc |" in out and "dm" not in out
    assert leaderboard_main(["--records", str(tmp_path / "records"), "--include-shortened"]) == 0
    assert "| dm [smoke=true] |" in capsys.readouterr().out
    with pytest.raises(DDBenchError, match="shortened"):
        rec(shortened=3)


def test_shortened_settings_name_what_cut_the_budget():
    from ddbench.pipeline import shortened_settings

    cfg = {"smoke": False, "eval": {"epochs": 30, "num_seeds": 5, "models": ["convnet"]}, "dataset": {}}
    assert shortened_settings(cfg, ["method=dm", "eval.models=[convnet]"]) is None  # fewer models: not a cut
    assert shortened_settings(cfg, ["eval.epochs=30"]) == "eval.epochs=30"
    assert shortened_settings(dict(cfg, smoke=True), ["eval.epochs=30"]) == "smoke=true, eval.epochs=30"


def test_written_files_are_readable_by_others(tmp_path):
    path = write_record(rec(), tmp_path / "records")
    assert path.stat().st_mode & 0o777 == 0o666 & ~__import__("ddbench.utils").utils.current_umask()


def test_git_commit_outside_a_checkout_comes_from_the_environment(monkeypatch):
    import subprocess

    from ddbench import utils

    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, "git")

    monkeypatch.setattr(utils.subprocess, "run", no_git)
    monkeypatch.delenv("DDBENCH_GIT_COMMIT", raising=False)
    assert utils.git_commit() is None
    monkeypatch.setenv("DDBENCH_GIT_COMMIT", "0123abc")
    assert utils.git_commit() == "0123abc"
