"""The static HTML leaderboard: content, self-containedness, PNG plots, and sorting in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ddbench.cli.leaderboard import main as leaderboard_main
from ddbench.records import leaderboard_frame, make_record, write_record
from ddbench.records.html import SORT_JS, html_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")

MAIN = "t-cifar10-dc-main"
DETAIL = "t-cifar10-dc-detail"
CROSS = "t-cifar10-dc-cross"


def rec(**fields):
    base = dict(run_id="r", method="dc", dataset="cifar10", ipc=10, label_type="hard", protocol="dc",
                eval_model="convnet", accuracies=[0.5], seeds=[0], distill_seconds=10.0, eval_seconds=1.0,
                peak_gpu_memory_bytes=None, device="cpu", config={}, seed=0, artifact=None, git_commit="abc",
                versions={"ddbench": "test"})
    base.update(fields)
    return make_record(**base)


def records() -> list[dict]:
    out = []
    table = {"random": (0.30, 0.1), "dm": (0.48, 30.0), "mtt": (0.65, None), "datm": (0.67, 900.0)}
    for i, (method, (acc, seconds)) in enumerate(table.items()):
        label = "soft" if method == "datm" else "hard"
        for ipc, bump in ((1, -0.15), (10, 0.0)):
            memory = {"peak_gpu_memory_bytes": 3 * 2**30, "peak_cpu_memory_bytes": 2**29} if method == "dm" else {}
            out.append(rec(run_id=f"{method}{ipc}", method=method, ipc=ipc, label_type=label,
                           accuracies=[acc + bump, acc + bump + 0.01], seeds=[0, 1], **memory,
                           distill_seconds=None if seconds is None else seconds * ipc,
                           scores={"hlr": 0.5 - acc, "ior": acc - 0.3, "lrs": 0.3 + acc / 4}))
            out.append(rec(run_id=f"{method}{ipc}a", method=method, ipc=ipc, label_type=label, eval_model="alexnet",
                           accuracies=[acc + bump - 0.1], distill_seconds=None if seconds is None else seconds * ipc))
    out.append(rec(run_id="kd1", protocol="kd", method="dm", label_type="soft", accuracies=[0.55]))
    return out


class Tables(HTMLParser):
    """Rows of every <table id=...>: {id: [[cell text, ...], ...]} (header row first), plus header attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[dict[str, str]]] = {}
        self.tags: list[tuple[str, dict]] = []
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id"):
            self._table = attrs["id"]
            self.tables[self._table] = []
            self.headers[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            if tag == "th":
                self.headers[self._table].append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def column(rows: list[list[str]], title: str) -> list[str]:
    index = rows[0].index(title)
    return [r[index] for r in rows[1:]]


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("board")
    for r in records():
        write_record(r, root / "records")
    out = root / "site" / "index.html"
    assert leaderboard_main(["--records", str(root / "records"), "--format", "html", "--out", str(out)]) == 0
    return out


def test_page_is_self_contained_with_tables_and_plots(board):
    text = board.read_text()
    pngs = sorted(p.name for p in board.parent.glob("*.png"))
    assert pngs == sorted(f"index_{s}_{k}.png" for s in ("cifar10-dc", "cifar10-kd") for k in ("acc_vs_ipc", "acc_vs_time"))
    assert all((board.parent / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    page = Tables(text)
    # nothing is fetched: no external scripts, styles or images
    for tag, attrs in page.tags:
        assert not (tag == "script" and attrs.get("src")) and not (tag == "link" and attrs.get("href"))
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    assert "http://" not in text and "https://" not in text
    assert sum(tag == "img" for tag, _ in page.tags) == 4
    main = page.tables[MAIN]  # methods as rows, IPCs as columns, as papers print them
    assert main[0] == ["Method", "Labels", "IPC 1", "IPC 10"]
    assert main[1:] == [["datm", "soft", "52.50 ± 0.50", "67.50 ± 0.50"], ["dm", "hard", "33.50 ± 0.50", "48.50 ± 0.50"],
                        ["mtt", "hard", "50.50 ± 0.50", "65.50 ± 0.50"], ["random", "hard", "15.50 ± 0.50", "30.50 ± 0.50"]]
    titles = [a.get("title", "") for tag, a in page.tags if tag == "td" and "title" in a]
    assert any("2 seeds" in t and "commit abc" in t and "command:" in t for t in titles)
    rows = page.tables[DETAIL]
    assert rows[0][:4] == ["Method", "Labels", "IPC", "Accuracy (%)"] and {"HLR", "IOR", "LRS"} <= set(rows[0])
    assert column(rows, "Method") == ["datm", "mtt", "dm", "random"] * 2  # per IPC, best first as rendered
    assert column(rows, "Accuracy (%)")[4:] == ["67.50", "65.50", "48.50", "30.50"]
    assert column(rows, "Peak GPU (GiB)")[4:] == ["—", "—", "3.00", "—"]
    assert column(rows, "Peak CPU (GiB)")[4:] == ["—", "—", "0.50", "—"]
    cross = page.tables[CROSS]
    assert cross[0] == ["Method", "Labels", "IPC", "convnet", "alexnet", "Mean over models"]
    assert ["dm", "hard", "10", "48.50 ± 0.50 (n=2)", "38.00 ± 0.00 (n=1)", "43.25"] in cross
    assert page.tables["t-cifar10-kd-main"][1] == ["dm", "soft", "55.00 ± 0.00"]


def test_html_without_out_file_embeds_plots_only():
    text, pngs = html_report(leaderboard_frame(records()))
    assert len(pngs) == 4 and "(<a href=" not in text
    empty, none = html_report(leaderboard_frame([]))
    assert "No records" in empty and none == {}


# ----------------------------------------------------------------------------------------- in Chromium


def dump_dom(url: str, tmp_path: Path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
               "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and ("<table" in done.stdout or "<pre" in done.stdout), done.stderr[-2000:]
    return done.stdout


@needs_chromium
def test_chromium_shows_rows_and_sorts_by_header_click(board, tmp_path):
    url = board.resolve().as_uri()
    shown = Tables(dump_dom(url, tmp_path))
    assert column(shown.tables[DETAIL], "Method") == ["datm", "mtt", "dm", "random"] * 2
    assert len(shown.tables[CROSS]) == 1 + 8 and len(shown.tables[MAIN]) == 1 + 4
    # the hash clicks the header once: text columns sort ascending first (stable: IPC 1 before IPC 10)
    by_method = Tables(dump_dom(url + "#sort=method", tmp_path))
    assert column(by_method.tables[DETAIL], "Method") == ["datm", "datm", "dm", "dm", "mtt", "mtt", "random", "random"]
    assert column(by_method.tables[CROSS], "Method") == sorted(column(by_method.tables[CROSS], "Method"))
    method_header = next(h for h in by_method.headers[DETAIL] if h["data-key"] == "method")
    assert method_header["data-dir"] == "asc"
    # numbers: ascending on request; missing values (mtt has no distillation time) stay last either way
    ascending = Tables(dump_dom(url + "#sort=mean&dir=asc", tmp_path))
    assert column(ascending.tables[DETAIL], "Accuracy (%)") == [
        "15.50", "30.50", "33.50", "48.50", "50.50", "52.50", "65.50", "67.50"]
    for direction, order in (("asc", ["random", "random", "dm", "dm", "datm", "datm", "mtt", "mtt"]),
                             ("desc", ["datm", "datm", "dm", "dm", "random", "random", "mtt", "mtt"])):
        timed = Tables(dump_dom(url + f"#sort=distill_seconds&dir={direction}", tmp_path))
        assert column(timed.tables[DETAIL], "Method") == order
        assert column(timed.tables[DETAIL], "Distill (s)")[-1] == "—"


@needs_chromium
def test_sort_functions_in_the_browser(tmp_path):
    cases = """
    var out = {
      nullLastAsc: compareValues(null, 1, 1) > 0 && compareValues(1, null, 1) < 0,
      nullLastDesc: compareValues(null, 1, -1) > 0 && compareValues(1, null, -1) < 0,
      numAsc: sortRows([3, null, 1, 2, 1], 1),
      numDesc: sortRows([3, null, 1, 2, 1], -1),
      text: sortRows(['b', 'a', null, 'c'], 1),
      parsed: [cellValue({hasAttribute: function () { return true; }, getAttribute: function () { return ' 2.5 '; }}, 'num'),
               cellValue({hasAttribute: function () { return true; }, getAttribute: function () { return ''; }}, 'num'),
               cellValue({hasAttribute: function () { return false; }, textContent: ' MTT '}, 'text')]
    };
    document.getElementById('out').textContent = JSON.stringify(out);
    """
    page = tmp_path / "sort.html"
    page.write_text(f"<!DOCTYPE html><html><body><pre id=\"out\"></pre><script>{SORT_JS}</script>"
                    f"<script>{cases}</script></body></html>")
    dom = dump_dom(page.resolve().as_uri(), tmp_path)
    result = json.loads(dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert result["nullLastAsc"] and result["nullLastDesc"]
    assert result["numAsc"] == [2, 4, 3, 0, 1]  # stable among equal values, null last
    assert result["numDesc"] == [0, 3, 2, 4, 1]
    assert result["text"] == [1, 0, 3, 2]
    assert result["parsed"] == [2.5, None, "mtt"]


@needs_chromium
def test_a_boards_planned_architectures_are_columns_before_their_records_exist(tmp_path):
    """The digits board plans ConvNet, AlexNet, VGG-11 and ResNet-18-AP at IPC 10: with records for two of them the
    cross-architecture tables (Markdown, HTML, and the page as Chromium shows it) have all four columns, the
    missing ones empty (never 0) and no mean for incomplete rows."""
    from ddbench.board import load_board, planned_cross, render_leaderboard

    planned = planned_cross(load_board("digits"))
    assert planned[("digits", "dc")] == (["convnet", "alexnet", "vgg11", "resnet18_ap"], [10])
    found = [r | {"dataset": "digits"} for r in records() if r["protocol"] == "dc"]
    found.append(rec(run_id="dmv", method="dm", dataset="digits", eval_model="vgg11", accuracies=[0.4, 0.42],
                     seeds=[0, 1]))
    render_leaderboard(found, tmp_path / "site")
    text = (tmp_path / "site" / "README.md").read_text(encoding="utf-8")
    cross = text.split("Cross-architecture")[1]
    assert "| Method | Labels | IPC | convnet | alexnet | vgg11 | resnet18_ap | Mean over models |" in cross
    assert "| dm | hard | 10 | 48.50 ± 0.50 (n=2) | 38.00 ± 0.00 (n=1) | 41.00 ± 1.00 (n=2) | — | — |" in cross
    assert "| random | hard | 10 | 30.50 ± 0.50 (n=2) | 20.00 ± 0.00 (n=1) | — | — | — |" in cross
    shown = Tables(dump_dom((tmp_path / "site" / "index.html").resolve().as_uri(), tmp_path))
    table = shown.tables["t-digits-dc-cross"]
    assert table[0] == ["Method", "Labels", "IPC", "convnet", "alexnet", "vgg11", "resnet18_ap", "Mean over models"]
    dm = next(row for row in table if row[:3] == ["dm", "hard", "10"])
    assert dm[3:] == ["48.50 ± 0.50 (n=2)", "38.00 ± 0.00 (n=1)", "41.00 ± 1.00 (n=2)", "—", "—"]


def test_a_boards_planned_ipcs_are_columns_and_a_one_model_section_has_no_cross_table(tmp_path):
    """The digits board runs kd at IPC 1, 10 and 50: with kd records at IPC 10 only, the kd table (Markdown and
    HTML) still has the IPC 1 and 50 columns, their cells missing; kd has one evaluation model, so it gets no
    cross-architecture table (it would repeat the main one), while dc's is there."""
    from ddbench.board import render_leaderboard

    found = [r | {"dataset": "digits"} for r in records()]
    render_leaderboard(found, tmp_path / "site")
    text = (tmp_path / "site" / "README.md").read_text(encoding="utf-8")
    dc, kd = text.split("## digits · protocol `kd`")
    assert "Cross-architecture" in dc and "Cross-architecture" not in kd
    assert "| Method | Labels | IPC 1 | IPC 10 | IPC 50 |" in kd
    assert "| dm | soft | — | 55.00 ± 0.00 (n=1) | — |" in kd
    shown = Tables((tmp_path / "site" / "index.html").read_text(encoding="utf-8"))
    assert "t-digits-dc-cross" in shown.tables and "t-digits-kd-cross" not in shown.tables
    main = shown.tables["t-digits-kd-main"]
    assert main[0] == ["Method", "Labels", "IPC 1", "IPC 10", "IPC 50"]
    assert next(row for row in main if row[0] == "dm")[2:] == ["—", "55.00 ± 0.00", "—"]
