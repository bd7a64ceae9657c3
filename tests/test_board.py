"""Boards: cells, resumption from records, the failure list, rendering, and a real two-cell smoke board."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from ddbench.board import (
    Board,
    CellOutcome,
    available_boards,
    cells,
    estimate_seconds,
    finished_cells,
    load_board,
    render_leaderboard,
    run_board,
)
from ddbench.cli.board import main as board_main
from ddbench.evaluation import EvalProtocol
from ddbench.pipeline import check_method, resolved_config, shortened_settings
from ddbench.methods import list_methods
from ddbench.records import make_record, read_records, write_record
from ddbench.utils import DDBenchError

BIN = Path(sys.executable).parent


def small_board(**changes) -> Board:
    data = {
        "name": "tiny", "dataset": "digits", "ipcs": [1, 10], "protocols": ["dc"], "eval_models": ["convnet"],
        "methods": {"random": {}, "dm": {"overrides": ["method.iterations=5"], "protocols": ["dc", "kd"]}},
        "not_applicable": {"dm": {1: "needs more images"}}, "references": False,
    }
    data.update(changes)
    return Board.from_dict(data, "test")


def fake_record(cell_id: str, method: str = "random", ipc: int = 1, model: str = "convnet", seconds: float = 2.0,
                protocol: str = "dc"):
    return make_record(
        run_id=f"r-{cell_id}-{model}", method=method, dataset="digits", ipc=ipc, label_type="hard", protocol=protocol,
        eval_model=model, accuracies=[0.5, 0.7], seeds=[0, 1], distill_seconds=1.0, eval_seconds=seconds,
        peak_gpu_memory_bytes=None, device="cpu", config={"board": {"name": "tiny", "cell": cell_id}},
        seed=0, artifact=None, git_commit="abc", versions={},
    )


def test_cells_expand_methods_ipcs_protocols_and_mark_not_applicable():
    todo, na = cells(small_board())
    assert [c.label for c in todo] == ["random ipc1 dc", "random ipc10 dc", "dm ipc10 dc", "dm ipc10 kd"]
    assert na == [("dm", 1, "dc", "needs more images"), ("dm", 1, "kd", "needs more images")]
    dm = todo[2]
    assert dm.args == ("method=dm", "dataset=digits", "ipc=10", "eval=dc", "eval.models=[convnet]",
                       "method.iterations=5")
    assert dm.eval_models == ("convnet",)


def test_cell_id_follows_the_arguments_that_change_the_result():
    first = cells(small_board())[0][2]
    again = cells(small_board())[0][2]
    changed = cells(small_board(methods={"dm": {"overrides": ["method.iterations=6"]}}))[0][0]
    assert first.id == again.id
    assert changed.label == first.label and changed.id != first.id
    # where records go is not part of the id
    assert f"board.cell='{first.id}'" in first.command("/r", "/o") and "paths.records=/r" in first.command("/r", "/o")


def test_protocol_models_default_to_the_protocol_yaml():
    todo, _ = cells(small_board(eval_models=None))
    assert todo[0].eval_models == ("convnet", "alexnet", "vgg11", "resnet18_ap")  # dc's list
    with pytest.raises(DDBenchError, match="unknown protocol 'nope'.*valid protocols"):
        cells(small_board(protocols=["nope"]))


def test_bad_boards_get_one_clear_error(tmp_path):
    with pytest.raises(DDBenchError, match="unknown board 'nope'; valid boards: .*digits"):
        load_board("nope")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "dataset": "digits", "ipcs": [1], "methods": {"random": {}},
                                    "seeds": 3}))
    with pytest.raises(DDBenchError, match=r"unknown key\(s\) \['seeds'\]"):
        load_board(str(path))
    path.write_text(yaml.safe_dump({"name": "b", "dataset": "digits", "ipcs": [1],
                                    "methods": {"random": {"override": []}}}))
    with pytest.raises(DDBenchError, match="method 'random' has unknown key"):
        load_board(str(path))
    with pytest.raises(DDBenchError, match="missing"):
        Board.from_dict({"name": "b", "dataset": "digits"}, "x")


def test_run_board_skips_finished_cells_lists_failures_and_reports_eta():
    board = small_board()
    todo, _ = cells(board)
    records = [fake_record(todo[0].id)]
    ran, lines = [], []

    def runner(cell, records_dir, output_root, extra, timeout=None, log_dir=None, **kwargs):
        ran.append(cell.label)
        if cell.label == "dm ipc10 kd":
            return CellOutcome(cell, "failed", 1.0, "error: boom")
        return CellOutcome(cell, "done", 3.0)

    outcomes = run_board(board, "/tmp/none", read=lambda: records, runner=runner, echo=lines.append)
    assert ran == ["random ipc10 dc", "dm ipc10 dc", "dm ipc10 kd"]
    assert [o.status for o in outcomes] == ["skipped", "done", "done", "failed"]
    assert any("1 of 4 cells already have records" in line for line in lines)
    assert any("ETA" in line for line in lines)
    assert any("FAILED: error: boom" in line for line in lines)
    # --rerun runs every cell; only= filters
    ran.clear()
    run_board(board, "/tmp/none", read=lambda: records, runner=runner, echo=lines.append, rerun=True,
              only=lambda c: c.method == "random")
    assert ran == ["random ipc1 dc", "random ipc10 dc"]


def test_a_cell_is_done_only_when_every_eval_model_has_a_record():
    board = small_board(eval_models=["convnet", "alexnet"])
    cell = cells(board)[0][0]
    assert finished_cells([fake_record(cell.id)]) == {cell.id: {"convnet"}}
    ran = []

    def runner(c, *args, **kwargs):
        ran.append(c.label)
        return CellOutcome(c, "done", 1.0)

    run_board(board, "/x", read=lambda: [fake_record(cell.id)], runner=runner, echo=lambda s: None,
              only=lambda c: c.label == cell.label)
    assert ran == [cell.label]
    ran.clear()
    both = [fake_record(cell.id), fake_record(cell.id, model="alexnet")]
    run_board(board, "/x", read=lambda: both, runner=runner, echo=lambda s: None, only=lambda c: c.label == cell.label)
    assert ran == []


def test_max_minutes_stops_before_a_cell_that_would_not_fit():
    board = small_board()
    clock = {"t": 0.0}
    lines = []

    def runner(cell, *args, **kwargs):
        return CellOutcome(cell, "done", 40.0)

    import ddbench.board as board_module

    real = board_module.time.perf_counter
    board_module.time.perf_counter = lambda: clock["t"]
    try:
        def tick_runner(cell, *args, **kwargs):
            clock["t"] += 40.0
            return runner(cell)

        outcomes = run_board(board, "/x", read=lambda: [], runner=tick_runner, echo=lines.append, max_minutes=1.5)
    finally:
        board_module.time.perf_counter = real
    assert [o.status for o in outcomes] == ["done", "done"]  # 40 s + 40 s; a third would end at 120 s > 90 s
    assert any("no new cell after" in line and "2 cell(s) left" in line for line in lines)


def test_every_shipped_board_composes(tmp_path):
    """Every cell of every board in conf/board is a valid ddbench-run config with a registered method."""
    methods = set(list_methods())
    assert {"digits", "fashion_mnist"} <= set(available_boards())
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        for name in available_boards():
            board = load_board(name)
            for cell in cells(board)[0]:
                cfg = compose("config", overrides=[*cell.args, f"board.cell='{cell.id}'"])
                cfg.paths.output = str(tmp_path)  # set by Hydra at run time
                plain = resolved_config(cfg, overrides=list(cell.args))
                EvalProtocol.from_dict(plain["eval"])
                assert cfg.eval.name == cell.protocol and list(cfg.eval.models) == list(cell.eval_models)
                if cell.kind == "reference":  # ddbench-reference: no method
                    continue
                assert cell.method in methods, f"board {name}: unknown method {cell.method}"
                assert cfg.method.name == cell.method and cfg.ipc == cell.ipc
                check_method(plain)  # every method option of the cell exists and is valid
                assert shortened_settings(plain, list(cell.args)) is None, f"{cell.label} would be off the board"


def test_rendered_leaderboard_marks_not_applicable_cells_and_keeps_shortened_runs_off(tmp_path):
    board = load_board("digits")
    todo = [c for c in cells(board)[0] if c.kind == "main"]
    rec = fake_record(todo[0].id)
    infer = next(c for c in todo if c.method == "infer" and c.ipc == 10 and c.protocol == "dc")
    short = dict(fake_record("x", method="dm"), shortened="smoke=true")
    paths = render_leaderboard([rec, fake_record(infer.id, method="infer", ipc=10), short], tmp_path)
    names = {p.name for p in paths}
    assert {"README.md", "index.html"} <= names
    text = (tmp_path / "README.md").read_text()
    assert "| random | hard | 60.00 ± 10.00 (n=2)" in text
    assert "| infer | hard | n/a | 60.00 ± 10.00 (n=2)" in text  # the board's not_applicable cell, not a gap
    page = (tmp_path / "index.html").read_text()
    assert 'title="INFER&#x27;s budget floor' in page and ">n/a</td>" in page
    assert "| dm " not in text  # the smoke record stays off
    assert "`ddbench-board digits`" in text and "| 2 of " in text
    for path in paths:
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not readable by others"


def test_two_cell_smoke_board_resumes_after_a_kill(tmp_path):
    """Kill ddbench-board while its second cell runs (after its reference cell); running it again runs only the
    cells without records, and the page shows the reference row beside the methods."""
    board = tmp_path / "two.yaml"
    board.write_text(yaml.safe_dump({
        "name": "two", "dataset": "digits", "ipcs": [1], "protocols": ["dc"], "eval_models": ["convnet"],
        "overrides": ["smoke=true", "eval.epochs=2", "eval.num_seeds=1"],
        "methods": {"random": {}, "herding": {}},
    }))
    records = tmp_path / "records"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    argv = [str(BIN / "ddbench-board"), str(board), "--records", str(records), "--outputs", str(tmp_path / "out"),
            "--out-dir", str(tmp_path / "site"), "--set", f"paths.cache={tmp_path / 'cache'}"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.rglob("*.json"))) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the board and its running cell
    proc.wait()
    first = sorted(r["method"] for r in read_records(records))
    assert len(first) == 2 and first[-1] == "whole dataset"  # the reference cell runs first
    other = ({"random", "herding"} - set(first)).pop()
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 of 3 cells already have records" in out.stdout
    assert f"[1/1] {other} ipc1 dc" in out.stdout
    after = read_records(records)
    assert sorted(r["method"] for r in after) == ["herding", "random", "whole dataset"]
    assert all(r["shortened"] and "smoke=true" in r["shortened"] for r in after)
    assert all(r["command"].startswith("ddbench-board") is False and "board.cell=" in r["command"] for r in after)
    reference = next(r for r in after if r["method"] == "whole dataset")
    assert reference["reference"] == "whole_dataset" and reference["ipc"] is None
    assert reference["command"].startswith("ddbench-reference")
    assert (tmp_path / "site" / "README.md").is_file() and (tmp_path / "site" / "index.html").is_file()
    # a third run has nothing to do
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 cell(s) to run" in again.stdout


def test_failed_cells_are_listed_and_write_no_record(tmp_path, capsys):
    board = tmp_path / "bad.yaml"
    board.write_text(yaml.safe_dump({
        "name": "bad", "dataset": "digits", "ipcs": [1], "protocols": ["dc"], "eval_models": ["convnet"],
        "methods": {"random": {"overrides": ["smoke=true", "eval.num_seeds=0"]}}, "references": False,
    }))
    code = board_main([str(board), "--records", str(tmp_path / "records"), "--outputs", str(tmp_path / "out"),
                       "--out-dir", str(tmp_path / "site")])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed cells (1" in err and "random ipc1 dc: error:" in err
    assert not list((tmp_path / "records").rglob("*.json"))


STAND_IN_RUN = """
import signal, sys, time
def stop(*_):
    print("[W] saved a checkpoint at epoch 228 (/cache/x.safetensors) and stopped; run the same command again")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
if sys.argv[1] == "stopped":
    stop()
if sys.argv[1] == "error":
    print("error: boom")
    sys.exit(1)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["stopped", "timeout", "error"])
def test_a_cell_stopped_by_a_signal_or_its_timeout_is_reported_as_stopped_not_failed(how, tmp_path, monkeypatch):
    """A run that saved its checkpoint and stopped (SIGTERM from outside, or the board's timeout) resumes when the
    board runs again: it is `stopped`, with the epoch it reached; a run that exits with an error is `failed`."""
    import ddbench.board as board_module

    monkeypatch.setattr(board_module, "run_command", lambda script: [sys.executable, "-c", STAND_IN_RUN, how])
    cell = cells(small_board())[0][0]
    outcome = board_module.run_cell(cell, tmp_path / "records", tmp_path / "out",
                                    timeout=3.0 if how == "timeout" else None, log_dir=tmp_path / "logs")
    if how == "error":
        assert (outcome.status, outcome.error) == ("failed", "error: boom")
        return
    assert outcome.status == "stopped" and outcome.seconds < 30  # SIGTERM first at the timeout: no kill after 120 s
    assert "(epoch 228)" in outcome.error and "run the board again" in outcome.error
    assert ("at its timeout (3 s)" in outcome.error) == (how == "timeout")
    assert "saved a checkpoint at epoch 228" in (tmp_path / "logs" / f"{cell.slug}.log").read_text()


def test_the_board_lists_stopped_cells_apart_from_failed_ones(tmp_path, capsys, monkeypatch):
    import ddbench.cli.board as cli_module

    def runner(cell, *args, **kwargs):
        return CellOutcome(cell, "stopped", 5.0, "stopped at its checkpoint (epoch 3); run the board again")

    monkeypatch.setattr(cli_module, "run_board", lambda board, records, **kw: [
        runner(c) for c in cells(board)[0] if kw["only"](c)])
    code = board_main(["digits", "--records", str(tmp_path / "records"), "--outputs", str(tmp_path / "out"),
                       "--only", "method=random", "--only", "ipc=1", "--only", "protocol=dc", "--only", "kind=main",
                       "--no-render"])
    captured = capsys.readouterr()
    assert code == 1
    assert "0 failed, 1 stopped (they resume)" in captured.out
    assert "stopped cells (1; no records yet" in captured.err
    assert "random ipc1 dc: stopped at its checkpoint" in captured.err
    assert "failed cells" not in captured.err


def test_cli_rejects_bad_filters(tmp_path, capsys):
    assert board_main(["digits", "--records", str(tmp_path), "--only", "colour=red", "--list"]) == 2
    assert "--only 'colour=red'" in capsys.readouterr().err
    assert board_main(["digits", "--records", str(tmp_path), "--only", "method=dm", "--list"]) == 0
    *listed, total = capsys.readouterr().out.splitlines()
    assert listed and all(" dm ipc" in line for line in listed)
    assert any("ETA" in line for line in listed) and total.startswith("estimated time of the missing cells")


def test_the_time_budget_bounds_the_running_cell():
    board = small_board(cell_timeout=1000.0)
    timeouts = []

    def runner(cell, *args, timeout=None, **kwargs):
        timeouts.append(timeout)
        return CellOutcome(cell, "done", 1.0)

    run_board(board, "/x", read=lambda: [], runner=runner, echo=lambda s: None, max_minutes=2,
              only=lambda c: c.label == "random ipc1 dc")
    assert 100 < timeouts[0] <= 120
    run_board(board, "/x", read=lambda: [], runner=runner, echo=lambda s: None,
              only=lambda c: c.label == "random ipc1 dc")
    assert timeouts[1] == 1000.0


def test_jobs_run_cells_side_by_side_with_their_share_of_threads():
    import threading

    board = small_board()
    seen, lock, both = [], threading.Lock(), threading.Barrier(2, timeout=10)

    def runner(cell, *args, threads=None, **kwargs):
        with lock:
            seen.append((cell.label, threads))
        if cell.label in ("random ipc1 dc", "random ipc10 dc"):
            both.wait()  # the first two cells must run at the same time
        return CellOutcome(cell, "done", 1.0)

    outcomes = run_board(board, "/x", read=lambda: [], runner=runner, echo=lambda s: None, jobs=2)
    assert sorted(o.cell.label for o in outcomes) == sorted(c.label for c in cells(board)[0])
    assert all(o.status == "done" for o in outcomes)
    assert {t for _, t in seen} == {max(1, (os.cpu_count() or 1) // 2)}


def test_a_shared_distillation_is_marked_in_the_seconds_table(tmp_path):
    board = load_board("digits")
    todo, _ = cells(board)
    own = fake_record(todo[0].id)
    shared = dict(fake_record("y", method="dm", ipc=10), distill_seconds=384.0, distill_reused=True)
    render_leaderboard([own], tmp_path)
    assert "†" not in (tmp_path / "README.md").read_text()
    render_leaderboard([own, shared], tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "384† + 2" in text and "| 1 + 2 |" in text  # only the reused cell carries the mark
    assert "† the set was distilled once" in text
    assert "shared with another protocol&#x27;s cell" in (tmp_path / "index.html").read_text()


def test_the_fair_scores_training_runs_count_in_a_cells_seconds_and_the_compute_total(tmp_path):
    from ddbench.board import board_summary, cell_seconds

    board = load_board("digits")
    todo, _ = cells(board)
    scored = dict(fake_record(todo[0].id), score_seconds=30.0)
    assert cell_seconds([scored], todo[0].id) == 1.0 + 2.0 + 30.0
    assert "| 33 s |" in board_summary([scored])
    render_leaderboard([scored], tmp_path)
    assert "| 1 + 2 + 30 |" in (tmp_path / "README.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "fair-score runs 30.0 s" in page and ">Scores (s)</th>" in page and ">30.0</td>" in page
    render_leaderboard([fake_record(todo[0].id)], tmp_path)  # a record that did not measure them
    assert "| 1 + 2 |" in (tmp_path / "README.md").read_text()
    assert "Scores (s)" not in (tmp_path / "index.html").read_text()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_a_rehearsal_runs_board_cells_with_smoke_settings_in_a_scratch_folder(tmp_path):
    """The GPU campaign's cells run on a CPU with smoke=true before a GPU is lent (a subset here; the whole board
    is `ddbench-board fashion_mnist --rehearse`); nothing lands in the real records folder."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    out = subprocess.run([str(BIN / "ddbench-board"), "fashion_mnist", "--rehearse", "--only", "method=random",
                          "--only", "ipc=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rehearsal of board fashion_mnist: 1 of 1 cell(s) passed in" in out.stdout
    scratch = next(tmp_path.glob("ddbench-rehearsal-fashion_mnist-*"))
    records = read_records(scratch / "records")
    assert sorted(r["eval_model"] for r in records) == ["alexnet", "convnet", "resnet18_ap", "vgg11"]
    assert all(r["shortened"] == "smoke=true" for r in records) and not (tmp_path / "leaderboard").exists()


def test_a_rehearsal_keeps_the_smoke_budgets_over_a_cells_own(tmp_path):
    """smoke=true alone lets a command's budget win (method.iterations=8000 stays 8000); with smoke_wins=true, as
    `ddbench-board --rehearse` runs each cell, the smoke budgets win while the cell's models and other keys stay."""
    from ddbench.api import compose_config

    cell = ["method=datadam", "dataset=digits", "ipc=1", "eval.models=[convnet,alexnet]", "method.iterations=8000",
            "method.power=1.0", "eval.epochs=300"]
    plain = compose_config([*cell, "smoke=true"])
    assert plain["method"]["iterations"] == 8000 and plain["eval"]["epochs"] == 300
    rehearsed = compose_config([*cell, "smoke=true", "smoke_wins=true"])
    smoke_only = compose_config(["method=datadam", "dataset=digits", "ipc=1", "smoke=true"])
    assert rehearsed["method"]["iterations"] == smoke_only["method"]["iterations"] < 8000
    assert rehearsed["eval"]["epochs"] == smoke_only["eval"]["epochs"] == 10
    assert rehearsed["eval"]["models"] == ["convnet", "alexnet"]  # what the cell evaluates on is kept
    assert rehearsed["method"]["power"] == 1.0  # a key smoke does not set keeps the cell's value


def test_a_methods_board_note_renders_under_its_tables_only_where_the_method_has_rows(tmp_path):
    board = small_board(methods={"random": {"note": "real   images,\n drawn per class"}, "dm": {}})
    assert board.methods["random"].note == "real images, drawn per class"  # YAML folding normalised
    assert cells(board)[0][0].id == cells(small_board(methods={"random": {}, "dm": {}}))[0][0].id  # not in the id
    digits = load_board("digits")
    assert "datadam_paper" in digits.methods["datadam"].note and "datadam_code" in digits.methods["datadam"].note
    datadam = next(c for c in cells(digits)[0] if c.method == "datadam" and c.ipc == 10 and c.kind == "main")
    render_leaderboard([fake_record(datadam.id, method="datadam", ipc=10)], tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert f"- datadam: {digits.methods['datadam'].note}" in text
    assert "- random:" not in text  # no rows, no note
    page = (tmp_path / "index.html").read_text()
    assert "<li><b>datadam</b>: ddbench&#x27;s default setting" in page
    with pytest.raises(DDBenchError, match="valid keys: overrides, protocols, ipcs, note"):
        small_board(methods={"random": {"notes": "x"}})


def test_a_note_keyed_by_protocol_renders_under_that_protocols_table_only(tmp_path):
    """A note measured under one protocol (datm's IPC 50 row under dc) is not printed under the kd table."""
    digits = load_board("digits")
    assert digits.methods["datm"].note_for("dc") and not digits.methods["datm"].note_for("kd")
    assert digits.methods["cda"].note_for("dc") == digits.methods["cda"].note_for("kd")  # one text for both
    by_label = {c.label: c for c in cells(digits)[0]}
    render_leaderboard([fake_record(by_label["datm ipc10 dc"].id, method="datm", ipc=10),
                        fake_record(by_label["datm ipc10 kd"].id, method="datm", ipc=10, protocol="kd")], tmp_path)
    text = (tmp_path / "README.md").read_text()
    dc, kd = text.split("protocol `kd`")
    assert f"- datm: {digits.methods['datm'].note_for('dc')}" in dc and "- datm:" not in kd
    page = (tmp_path / "index.html").read_text()
    assert page.count("<li><b>datm</b>") == 1
    board = small_board(methods={"random": {"note": {"dc": "a   dc\n text"}}, "dm": {}})
    assert board.methods["random"].note_for("dc") == "a dc text" and board.methods["random"].note_for("kd") == ""
    with pytest.raises(DDBenchError, match=r"note for protocol\(s\) \['fast'\] it does not run"):
        small_board(methods={"random": {"note": {"fast": "x"}}})
    with pytest.raises(DDBenchError, match="note must be a text or map protocols to texts"):
        small_board(methods={"random": {"note": {"dc": ["x"]}}})


def test_a_cell_id_that_reads_as_a_number_reaches_the_record_as_text():
    """An id such as 9e7662564664 is a float to Hydra's override parser: the command quotes it, so the record
    names the cell; a record written before the quoting (its config holds inf) is matched through its command."""
    from ddbench.api import compose_config

    cell = next(c for c in cells(load_board("digits"))[0] if c.label == "random ipc10 kd")
    assert cell.id == "9e7662564664"  # the board's own cell whose record went unmatched
    argv = cell.command("/records", "/outputs")
    assert f"board.cell='{cell.id}'" in argv
    cfg = compose_config([a for a in argv if not a.startswith(("hydra.", "progress=", "paths."))])
    assert cfg["board"]["cell"] == cell.id
    legacy = fake_record("x")
    legacy["config"]["board"]["cell"] = float("inf")
    legacy["command"] = "ddbench-run method=random board.name=digits board.cell=9e7662564664 paths.records=r"
    assert finished_cells([legacy]) == {"9e7662564664": {"convnet"}}


def test_only_model_selects_the_cells_that_evaluate_on_it(tmp_path, capsys):
    assert board_main(["digits", "--records", str(tmp_path), "--only", "model=resnet18_ap", "--list"]) == 0
    *listed, _ = capsys.readouterr().out.splitlines()
    assert len(listed) == 12  # 11 cross-architecture cells and the dc reference cell of the extra architectures
    assert all("resnet18_ap" in line for line in listed)
    assert sum(" ipc10 dc resnet18_ap" in line for line in listed) == 11


def test_a_main_cell_at_a_new_ipc_is_estimated_from_its_method_at_the_nearest_ipc():
    board = small_board(ipcs=[1, 10, 50], not_applicable={})
    todo, _ = cells(board)
    by_label = {c.label: c for c in todo}
    dm10 = fake_record(by_label["dm ipc10 dc"].id, method="dm", ipc=10, seconds=100.0)  # distill 1 s
    dm1 = fake_record(by_label["dm ipc1 dc"].id, method="dm", ipc=1, seconds=50.0)
    kd10 = fake_record(by_label["dm ipc10 kd"].id, method="dm", ipc=10, seconds=300.0)
    records = [dm1, dm10, kd10]
    # eval of the nearest IPC (10, not 1) times 50 / 10, plus the distillation scaled alike (no IPC 50 cell yet)
    assert estimate_seconds(by_label["dm ipc50 dc"], records, todo) == pytest.approx(100.0 * 5 + 1.0 * 5)
    assert estimate_seconds(by_label["dm ipc50 kd"], records, todo) == pytest.approx(300.0 * 5 + 1.0 * 5)
    # a finished IPC 50 cell of another protocol gives the distillation time at this IPC
    dm50 = fake_record(by_label["dm ipc50 dc"].id, method="dm", ipc=50, seconds=700.0)
    dm50["distill_seconds"] = 40.0
    assert estimate_seconds(by_label["dm ipc50 kd"], records + [dm50], todo) == pytest.approx(300.0 * 5 + 40.0)
    # nothing of the method under the protocol: unknown
    assert estimate_seconds(by_label["random ipc50 dc"], [kd10], todo) is None


def test_a_board_note_shows_its_commands_as_code_in_the_html_page():
    from ddbench.records import leaderboard_frame
    from ddbench.records.html import html_report

    page, _ = html_report(leaderboard_frame([fake_record("c1")]), notes={("digits", "dc", "random"): "see `run seed=S` <S>"})
    assert "<li><b>random</b>: see <code>run seed=S</code> &lt;S&gt;</li>" in page  # a command as code, text escaped


def test_a_reference_cell_is_estimated_from_a_finished_reference_cell_scaled_by_architecture_and_seeds():
    todo, _ = cells(load_board("digits"))
    by_label = {c.label: c for c in todo}
    dc_convnet = by_label["reference dc convnet"]
    extra = by_label["reference dc alexnet,vgg11,resnet18_ap"]
    assert extra.num_seeds == 3 and dc_convnet.num_seeds is None
    assert estimate_seconds(extra, [], todo) is None  # nothing comparable yet: ETA ?
    whole = fake_record(dc_convnet.id, seconds=500.0)  # 2 seeds: 250 s per seed on ConvNet
    whole["reference"] = "whole_dataset"
    assert estimate_seconds(extra, [whole], todo) == pytest.approx(250.0 * 3 * (3.9 + 7.0 + 9.5))
    # another protocol's reference cell falls back on it, with as many seeds as it had
    assert estimate_seconds(by_label["reference kd convnet"], [whole], todo) == pytest.approx(500.0)


def test_a_cross_architecture_cell_is_estimated_from_its_own_method_scaled_by_the_measured_architecture_ratio():
    """A method's cells cost what the method costs (INFER evaluates a set 2.8 times as large): the ETA of dm on
    AlexNet is dm's ConvNet seconds per seed times AlexNet's measured cost over ConvNet's (from random, which ran on
    both) times the cell's seeds, not the mean of other methods' AlexNet cells; STEP_COST's ratio before any
    method has run on AlexNet."""
    board = small_board(cross_architecture={"models": ["alexnet"], "ipcs": [10], "num_seeds": 3})
    todo, _ = cells(board)
    by_label = {c.label: c for c in todo}
    dm_alexnet = by_label["dm ipc10 dc alexnet"]
    dm = fake_record(by_label["dm ipc10 dc"].id, method="dm", ipc=10, seconds=100.0)  # 2 seeds: 50 s per seed
    assert estimate_seconds(dm_alexnet, [dm], todo) == pytest.approx(50.0 * 3.9 * 3)
    random = fake_record(by_label["random ipc10 dc"].id, ipc=10, seconds=20.0)
    random_alexnet = fake_record(by_label["random ipc10 dc alexnet"].id, ipc=10, model="alexnet", seconds=80.0)
    assert estimate_seconds(dm_alexnet, [dm, random, random_alexnet], todo) == pytest.approx(50.0 * 4.0 * 3)
    # dm has not run anywhere: the mean of the finished AlexNet cells (80 s evaluation + 1 s distillation)
    assert estimate_seconds(dm_alexnet, [random, random_alexnet], todo) == pytest.approx(81.0)


def test_a_reference_note_renders_under_its_protocols_table_when_the_section_has_reference_rows(tmp_path):
    """The digits board's notes on its reference rows print under their own protocol's table (dc: a board
    protocol; kd: only some methods run it), after the methods' notes, in Markdown and HTML, once the section has
    reference rows."""
    digits = load_board("digits")
    text_dc, text_kd = digits.reference_note["dc"], digits.reference_note["kd"]
    by_label = {c.label: c for c in cells(digits)[0]}
    runs = [fake_record(by_label["datm ipc10 dc"].id, method="datm", ipc=10),
            fake_record(by_label["datm ipc10 kd"].id, method="datm", ipc=10, protocol="kd")]
    render_leaderboard(runs, tmp_path / "bare")
    assert "- reference rows:" not in (tmp_path / "bare" / "README.md").read_text()  # no reference rows yet
    whole = [fake_record(by_label["reference dc convnet"].id, model=m) for m in ("convnet", "vgg11")]
    whole += [fake_record(by_label["reference kd convnet"].id, protocol="kd")]
    for r in whole:
        r.update(reference="whole_dataset", method="whole dataset", ipc=None)
    render_leaderboard(runs + whole, tmp_path / "site")
    dc, kd = (tmp_path / "site" / "README.md").read_text().split("protocol `kd`")
    assert f"- reference rows: {text_dc}" in dc and text_kd not in dc
    assert f"- reference rows: {text_kd}" in kd and text_dc not in kd
    assert dc.index("- datm:") < dc.index("- reference rows:")
    assert (tmp_path / "site" / "index.html").read_text().count("<li><b>reference rows</b>") == 2
    assert small_board(reference_note={"kd": "x"}).reference_note == {"kd": "x"}  # dm runs kd
    with pytest.raises(DDBenchError, match=r"reference_note has a note for protocol\(s\) \['infer'\] it does not run"):
        small_board(reference_note={"infer": "x"})
    assert small_board(reference_note="one   text").reference_note == "one text"
