"""A self-contained static HTML leaderboard: sortable tables, a cross-architecture table and plots.

The page has no external resources (inline CSS and JavaScript, PNG plots embedded as base64). Per
(dataset, protocol): a method × IPC table on the primary evaluation model (ConvNet when present; hover a number
for its seeds, times, git commit and command), a detail table (with times and peak GPU and CPU memory), a cross-architecture table, accuracy vs IPC per
method, and accuracy vs distillation time.

Sorting: clicking a column header sorts its table (numbers descending first, text ascending first; a second
click reverses; empty cells always last; ties keep the previous order). A URL hash `#sort=<column key>`
(optionally `&dir=asc|desc`) applies the same click to every table with that column when the page loads.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from datetime import datetime, timezone
from typing import Any, Iterable

import pandas as pd

from ddbench.records.leaderboard import (
    DEFAULT_EVAL_MODEL, EARLIER_TEACHER_MARK, SCORE_COLUMNS, _model_order, cell_rows, cross_rows, current_teacher,
    earlier_teacher, earlier_teacher_cells, earlier_teacher_line, model_mean, reference_label, section_notes,
    section_references, table_ipcs,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2433}
h1{margin-bottom:.2rem} h2{margin-top:2.5rem;border-bottom:2px solid #d0d7e2;padding-bottom:.3rem} h3{margin-bottom:.4rem}
.meta{color:#5a6478;font-size:.9rem} nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0 1.2rem;font-size:.92rem}
th,td{border:1px solid #d0d7e2;padding:.3rem .6rem;text-align:right;white-space:nowrap}
th{background:#eef2f8;cursor:pointer;user-select:none;position:relative;padding-right:1.3rem}
th.text,td.text{text-align:left}
th[data-dir=asc]::after{content:"\\25B2";position:absolute;right:.35rem;font-size:.7rem}
th[data-dir=desc]::after{content:"\\25BC";position:absolute;right:.35rem;font-size:.7rem}
tbody tr:nth-child(even){background:#f8fafc} tbody tr:hover{background:#fff7e0}
td.missing{color:#9aa3b5}
.plots{display:flex;flex-wrap:wrap;gap:1rem} .plots figure{margin:0} .plots img{max-width:560px;border:1px solid #d0d7e2}
figcaption{font-size:.85rem;color:#5a6478}
"""

# The sorting logic. compareValues/sortRows are pure functions (tested on their own); the rest wires them to the DOM.
SORT_JS = r"""
function cellValue(cell, type) {
  var raw = cell.hasAttribute('data-value') ? cell.getAttribute('data-value') : cell.textContent;
  raw = (raw || '').trim();
  if (type === 'num') {
    if (raw === '') return null;
    var f = parseFloat(raw);
    return isNaN(f) ? null : f;
  }
  return raw === '' ? null : raw.toLowerCase();
}
function compareValues(a, b, dir) {
  if (a === null && b === null) return 0;
  if (a === null) return 1;
  if (b === null) return -1;
  if (a < b) return -dir;
  if (a > b) return dir;
  return 0;
}
function sortRows(values, dir) {
  var idx = values.map(function (v, i) { return i; });
  idx.sort(function (i, j) { return compareValues(values[i], values[j], dir) || (i - j); });
  return idx;
}
function sortTable(table, col, dir) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var th = table.tHead.rows[0].cells[col];
  var type = th.getAttribute('data-type') || 'text';
  var order = sortRows(rows.map(function (r) { return cellValue(r.cells[col], type); }), dir);
  order.forEach(function (i) { body.appendChild(rows[i]); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute('data-dir'); });
  th.setAttribute('data-dir', dir > 0 ? 'asc' : 'desc');
}
function onHeaderClick(event) {
  var th = event.currentTarget;
  var table = th.closest('table');
  var current = th.getAttribute('data-dir');
  var dir;
  if (current === 'asc') dir = -1;
  else if (current === 'desc') dir = 1;
  else dir = th.getAttribute('data-type') === 'num' ? -1 : 1;
  sortTable(table, th.cellIndex, dir);
}
function applyHash() {
  var params = {};
  (location.hash || '').replace(/^#/, '').split('&').forEach(function (part) {
    var kv = part.split('=');
    if (kv[0]) params[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || '');
  });
  if (!params.sort) return;
  document.querySelectorAll('table.sortable th[data-key="' + params.sort + '"]').forEach(function (th) {
    th.click();
    var want = params.dir;
    if (want && th.getAttribute('data-dir') !== want) th.click();
  });
}
function initSortable() {
  document.querySelectorAll('table.sortable th').forEach(function (th) {
    th.addEventListener('click', onHeaderClick);
  });
  applyHash();
  window.addEventListener('hashchange', applyHash);
}
if (typeof document !== 'undefined') {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', initSortable);
  else initSortable();
}
"""

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(*parts: Any) -> str:
    return "-".join(_SLUG.sub("_", str(p)) for p in parts)


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class _Col:
    def __init__(self, key: str, title: str, kind: str = "num"):
        self.key, self.title, self.kind = key, title, kind


def _cell(value: Any, kind: str, text: str | None = None) -> str:
    if kind == "text":
        return f'<td class="text">{html.escape(str(value))}</td>'
    if not _finite(value):
        return '<td class="missing" data-value="">—</td>'
    shown = text if text is not None else f"{float(value):.4g}"
    return f'<td data-value="{float(value)!r}">{html.escape(shown)}</td>'


def _gib_cell(value: Any) -> str:
    """A memory cell shown in GiB; sorts by the bytes."""
    if not _finite(value):
        return _cell(None, "num")
    return f'<td data-value="{float(value)!r}">{float(value) / 2**30:.2f}</td>'


def _table(table_id: str, columns: list[_Col], rows: list[list[str]]) -> str:
    head = "".join(
        f'<th data-key="{html.escape(c.key)}" data-type="{c.kind}" class="{"text" if c.kind == "text" else "num"}">'
        f"{html.escape(c.title)}</th>"
        for c in columns
    )
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f'<table class="sortable" id="{html.escape(table_id)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _primary_model(section: pd.DataFrame) -> str:
    models = sorted(set(section["eval_model"]), key=_model_order)
    for m in models:
        if m.lower() == DEFAULT_EVAL_MODEL:
            return m
    counts = section["eval_model"].value_counts()
    return str(max(models, key=lambda m: (counts[m], -models.index(m))))


def _provenance(r: Any) -> str:
    """Hover text of a number: seeds, times, the git commit and the exact command behind it."""
    parts = [f"{int(r.n_seeds)} seeds, {int(r.n_runs)} run(s)"]
    if _finite(r.distill_seconds):
        parts.append(f"distill {r.distill_seconds:.1f} s" + (" (shared with another protocol's cell)"
                                                             if getattr(r, "distill_reused", False) else ""))
    if _finite(r.eval_seconds):
        parts.append(f"eval {r.eval_seconds:.1f} s")
    if _finite(r.score_seconds) and r.score_seconds > 0:
        parts.append(f"fair-score runs {r.score_seconds:.1f} s")
    parts.append(f"commit {r.git_commit or 'unknown'}")
    parts.append(f"command: {r.command or 'unknown'}")
    return " · ".join(parts)


def _titled(cell: str, title: str) -> str:
    return cell.replace("<td", f'<td title="{html.escape(title)}"', 1)


def _accuracy_cell(r: Any, text: str, teacher: str | None) -> str:
    """A cell's accuracy `text` with its provenance on hover, marked when another teacher than the section's
    `teacher` row relabelled it (see earlier_teacher)."""
    earlier = earlier_teacher(r, teacher)
    title = _provenance(r)
    if earlier is not None:
        text += " " + EARLIER_TEACHER_MARK
        title = (f"relabelled by an earlier teacher ({earlier * 100:.2f} % on the test set) than the teacher row; "
                 "not rerun since the protocol's teacher changed · " + title)
    return _titled(_cell(r.mean * 100, "num", text), title)


def _reference_cells(r: Any, n_columns: int) -> list[str]:
    """One reference row's number repeated over `n_columns` cells, with its provenance on hover."""
    text = f"{r.mean * 100:.2f} ± {r.std * 100:.2f}"
    title = f"{int(r.n_seeds)} seed(s) · commit {r.git_commit or 'unknown'} · command: {r.command or 'unknown'}"
    return [_titled(_cell(r.mean * 100, "num", text), title)] * n_columns


def _method_ipc_table(table_id: str, rows: pd.DataFrame, not_applicable: dict[tuple[str, int], str] | None = None,
                      references: pd.DataFrame | None = None, model: str = DEFAULT_EVAL_MODEL,
                      planned_ipcs: Iterable[int] = ()) -> str:
    """Methods (× label type) as rows, IPCs as columns, as papers print them; hover shows the provenance.
    not_applicable: (method, ipc) → why the cell is invalid, shown as n/a with the reason on hover. references:
    the section's whole-dataset (of `model`) and teacher rows, the same number in every IPC column. planned_ipcs:
    a board's IPCs for the section, columns even before their records exist."""
    na = not_applicable or {}
    ipcs = table_ipcs(rows, na, planned_ipcs)
    columns = [_Col("method", "Method", "text"), _Col("label_type", "Labels", "text")]
    columns += [_Col(f"ipc{ipc}", f"IPC {ipc}") for ipc in ipcs]
    found = cell_rows(rows)
    teacher = current_teacher(references)
    keys = sorted({(r.method, r.label_type) for r in rows.itertuples()}, key=lambda k: (k[0].lower(), k[0], k[1]))
    out = []
    for method, labels in keys:
        cells = [_cell(method, "text"), _cell(labels, "text")]
        for ipc in ipcs:
            r = found.get((method, labels, ipc))
            if r is None and (method, ipc) in na:
                cells.append(_titled('<td class="missing" data-value="">n/a</td>', na[(method, ipc)]))
            elif r is None:
                cells.append(_cell(None, "num"))
            else:
                cells.append(_accuracy_cell(r, f"{r.mean * 100:.2f} ± {r.std * 100:.2f}", teacher))
        out.append(cells)
    for r in ([] if references is None else references.itertuples()):
        if r.reference == "whole_dataset" and r.eval_model != model:
            continue
        out.append([_cell(reference_label(r), "text"), _cell("hard" if r.reference == "whole_dataset" else "—", "text")]
                   + _reference_cells(r, len(ipcs)))
    return _table(table_id, columns, out)


def _detail_table(table_id: str, rows: pd.DataFrame) -> str:
    """One row per (method, labels, IPC): accuracy, seeds, scores, times, runs and the commit."""
    columns = [_Col("method", "Method", "text"), _Col("label_type", "Labels", "text"), _Col("ipc", "IPC"),
               _Col("mean", "Accuracy (%)"), _Col("std", "± std (%)"), _Col("n_seeds", "Seeds")]
    present_scores = [s for s in SCORE_COLUMNS if rows[s].notna().any()]
    columns += [_Col(s, s.upper()) for s in present_scores]
    timed_scores = bool((rows["score_seconds"] > 0).any())
    columns += [_Col("distill_seconds", "Distill (s)"), _Col("eval_seconds", "Eval (s)")]
    columns += [_Col("score_seconds", "Scores (s)")] if timed_scores else []
    columns += [_Col("peak_gpu_memory_bytes", "Peak GPU (GiB)"), _Col("peak_cpu_memory_bytes", "Peak CPU (GiB)"),
                _Col("n_runs", "Runs"), _Col("git_commit", "Commit", "text")]
    out = []
    for r in rows.sort_values(["ipc", "mean"], ascending=[True, False], kind="stable").itertuples():
        cells = [_titled(_cell(r.method, "text"), _provenance(r)), _cell(r.label_type, "text"),
                 _cell(r.ipc, "num", str(int(r.ipc))),
                 _cell(r.mean * 100, "num", f"{r.mean * 100:.2f}"), _cell(r.std * 100, "num", f"{r.std * 100:.2f}"),
                 _cell(r.n_seeds, "num", str(int(r.n_seeds)))]
        for s in present_scores:
            value = getattr(r, s)
            cells.append(_cell(value, "num", f"{value:.4f}" if _finite(value) else None))
        cells += [_cell(r.distill_seconds, "num", f"{r.distill_seconds:.1f}" if _finite(r.distill_seconds) else None),
                  _cell(r.eval_seconds, "num", f"{r.eval_seconds:.1f}" if _finite(r.eval_seconds) else None)]
        if timed_scores:
            cells.append(_cell(r.score_seconds, "num", f"{r.score_seconds:.1f}" if _finite(r.score_seconds) else None))
        cells += [_gib_cell(r.peak_gpu_memory_bytes), _gib_cell(r.peak_cpu_memory_bytes),
                  _cell(r.n_runs, "num", str(int(r.n_runs))), _cell(str(r.git_commit or "")[:10], "text")]
        out.append(cells)
    return _table(table_id, columns, out)


def _cross_table(table_id: str, section: pd.DataFrame, references: pd.DataFrame | None = None,
                 planned: tuple[list[str], list[int]] | None = None) -> str | None:
    """Method × architecture at the IPCs evaluated beyond ConvNet (see cross_rows; planned: a board's (models,
    ipcs) for it); a missing model is an empty cell, the mean is over complete rows only; the whole-dataset row
    closes the table. None when the section has one evaluation model (the main table already shows it)."""
    models, keys, cells = cross_rows(section, planned)
    if len(models) < 2:
        return None
    columns = [_Col("method", "Method", "text"), _Col("label_type", "Labels", "text"), _Col("ipc", "IPC")]
    columns += [_Col(f"model:{m}", m) for m in models] + [_Col("model_mean", "Mean over models")]
    teacher = current_teacher(references)
    out = []
    for key in keys:
        row = [_cell(key[0], "text"), _cell(key[1], "text"), _cell(key[2], "num", str(key[2]))]
        for m in models:
            r = cells.get((*key, m))
            row.append(_cell(None, "num") if r is None else _accuracy_cell(
                r, f"{r.mean * 100:.2f} ± {r.std * 100:.2f} (n={int(r.n_seeds)})", teacher))
        avg = model_mean(cells, key, models)
        row.append(_cell(None if avg is None else avg * 100, "num", None if avg is None else f"{avg * 100:.2f}"))
        out.append(row)
    whole = {} if references is None else {r.eval_model: r for r in references.itertuples()
                                            if r.reference == "whole_dataset"}
    if whole:
        row = [_cell("whole dataset", "text"), _cell("hard", "text"), _cell(None, "num")]
        row += [_reference_cells(whole[m], 1)[0] if m in whole else _cell(None, "num") for m in models]
        found = [whole[m].mean for m in models if m in whole]
        avg = sum(found) / len(found) if len(found) == len(models) else None
        row.append(_cell(None if avg is None else avg * 100, "num", None if avg is None else f"{avg * 100:.2f}"))
        out.append(row)
    return _table(table_id, columns, out)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def plot_accuracy_vs_ipc(rows: pd.DataFrame, title: str) -> bytes:
    """Accuracy (%) vs IPC (log scale), one line per (method, labels) with ± std bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for (method, labels), group in sorted(rows.groupby(["method", "label_type"]), key=lambda kv: kv[0]):
        group = group.sort_values("ipc")
        ax.errorbar(group["ipc"], group["mean"] * 100, yerr=group["std"] * 100, marker="o", capsize=3,
                    label=f"{method} ({labels})")
    ax.set_xscale("log")
    ipcs = sorted(set(int(i) for i in rows["ipc"]))
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_accuracy_vs_time(rows: pd.DataFrame, title: str) -> bytes:
    """Accuracy (%) vs distillation seconds (log scale), one marker series per (method, labels), IPC annotated."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    timed = rows[rows["distill_seconds"].map(_finite)]
    for (method, labels), group in sorted(timed.groupby(["method", "label_type"]), key=lambda kv: kv[0]):
        seconds = group["distill_seconds"].clip(lower=1e-3)
        ax.scatter(seconds, group["mean"] * 100, label=f"{method} ({labels})")
        for s, a, ipc in zip(seconds, group["mean"] * 100, group["ipc"]):
            ax.annotate(f"{int(ipc)}", (s, a), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("distillation time (s, log scale; labels = IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(timed):
        ax.legend(fontsize=8)
    return _png(fig)


def inline_code(text: str) -> str:
    """Escaped text with its Markdown `code` spans (a board note's commands) as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def html_report(frame: pd.DataFrame, png_stem: str | None = None, n_records: int | None = None,
                not_applicable: dict[tuple[str, str, int], str] | None = None,
                references: pd.DataFrame | None = None, notes: dict[tuple[str, str, str], str] | None = None,
                cross: dict[tuple[str, str], tuple[list[str], list[int]]] | None = None,
                ipcs: dict[tuple[str, str], list[int]] | None = None) -> tuple[str, dict[str, bytes]]:
    """(page, {png file name: bytes}). With png_stem, plots are also named `<stem>_<section>_<plot>.png` and the
    page links to them (the caller writes them next to the page); the page itself embeds every plot.
    not_applicable: (dataset, method, ipc) → why that cell is invalid (n/a in the method × IPC tables); notes:
    (dataset, protocol, method) → a board's note on the method's setting, listed under that protocol's table;
    cross: (dataset, protocol) → the (models, ipcs) a board evaluates it on (columns and rows of the
    cross-architecture table); ipcs: (dataset, protocol) → the IPCs a board runs it at (columns of the method × IPC
    table before their records exist)."""
    pngs: dict[str, bytes] = {}
    parts: list[str] = []
    sections = sorted({(d, p) for d, p in zip(frame["dataset"], frame["protocol"])},
                      key=lambda s: (s[0].lower(), s[0], s[1])) if not frame.empty else []
    nav = " ".join(f'<a href="#{slug("sec", d, p)}">{html.escape(d)} · {html.escape(p)}</a>' for d, p in sections)
    for dataset, protocol in sections:
        section = frame[(frame["dataset"] == dataset) & (frame["protocol"] == protocol)]
        model = _primary_model(section)
        primary = section[section["eval_model"] == model]
        parts.append(f'<section id="{slug("sec", dataset, protocol)}">')
        parts.append(f"<h2>{html.escape(dataset)} · protocol <code>{html.escape(protocol)}</code></h2>")
        parts.append(f'<p class="meta">Test accuracy of <b>{html.escape(model)}</b> trained on the distilled data: '
                     "mean ± population std over all seeds of all runs, last epoch. Peak GPU / CPU memory: the largest over "
                     "the runs (CUDA memory allocated; the process's max RSS). Hover a number for its seeds, times, git "
                     "commit and command; click a column header to sort.</p>")
        na = {(m, ipc): why for (d, m, ipc), why in (not_applicable or {}).items() if d == dataset}
        refs = section_references(references, dataset, protocol)
        parts.append(_method_ipc_table(slug("t", dataset, protocol, "main"), primary, na, refs, model,
                                       (ipcs or {}).get((dataset, protocol), ())))
        setting = section_notes(notes, dataset, protocol, primary["method"], not refs.empty)
        line = earlier_teacher_line(earlier_teacher_cells(cell_rows(primary), current_teacher(refs)))
        setting += [(EARLIER_TEACHER_MARK, line)] if line else []
        if setting:
            parts.append('<ul class="meta">' + "".join(f"<li><b>{html.escape(m)}</b>: {inline_code(n)}</li>"
                                                       for m, n in setting) + "</ul>")
        if not refs.empty:
            parts.append('<p class="meta">Reference rows (the same at every IPC): <i>whole dataset</i> = the network '
                         "trained on the whole real train set with hard labels under this protocol's augmentation; "
                         "<i>teacher</i> = the protocol's teacher on the test set (it labels the students' "
                         "batches).</p>")
        parts.append("<h3>Details</h3>")
        parts.append(_detail_table(slug("t", dataset, protocol, "detail"), primary))
        cross_table = _cross_table(slug("t", dataset, protocol, "cross"), section, refs,
                                   (cross or {}).get((dataset, protocol)))
        if cross_table is not None:
            parts.append("<h3>Cross-architecture</h3>")
            parts.append('<p class="meta">Accuracy (%) per evaluation model, n = seeds per cell (a board may use '
                         "fewer seeds on the extra architectures); — = not run yet; the mean is over models, for "
                         "complete rows only.</p>")
            parts.append(cross_table)
        figures = []
        for kind, builder, caption in (
            ("acc_vs_ipc", plot_accuracy_vs_ipc, f"Accuracy vs IPC ({model})"),
            ("acc_vs_time", plot_accuracy_vs_time, f"Accuracy vs distillation time ({model})"),
        ):
            png = builder(primary, f"{dataset} · {protocol} · {model}")
            name = f"{png_stem or 'leaderboard'}_{slug(dataset, protocol)}_{kind}.png"
            pngs[name] = png
            data = base64.b64encode(png).decode("ascii")
            link = f' (<a href="{html.escape(name)}">PNG</a>)' if png_stem else ""
            figures.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")
        parts.append('<div class="plots">' + "".join(figures) + "</div>")
        parts.append("</section>")
    if not sections:
        parts.append("<p><em>No records.</em></p>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    count = f"{n_records} records, " if n_records is not None else ""
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ddbench leaderboard</title>
<style>{CSS}</style>
</head>
<body>
<h1>ddbench leaderboard</h1>
<p class="meta">{count}{len(frame)} cells, rendered {stamp}. Accuracies in percent; HLR/IOR are differences of
fractions and LRS/ARS lie in [0, 1] (DD-Ranking's formulas on fractions).</p>
<nav>{nav}</nav>
{chr(10).join(parts)}
<script>{SORT_JS}</script>
</body>
</html>
"""
    return page, pngs


def render_html(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    """The self-contained page (plots embedded), for `ddbench-leaderboard --format html`."""
    return html_report(frame, references=references)[0]
