"""Aggregate result records into a leaderboard and render it as Markdown or CSV.

A leaderboard cell is one (dataset, protocol, label_type, method, ipc, eval_model).
All records of a cell pool their per-seed accuracies: the cell's mean and std
(population std, ddof=0) are taken over that pooled list, so two runs with five
seeds each give one cell with n=10.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import pandas as pd

from ddbench.records.schema import accuracy_stats, parse_time

DEFAULT_EVAL_MODEL = "convnet"
DEFAULT_EVAL_MODEL_TITLE = "ConvNet"

CELL_KEYS = ["dataset", "protocol", "label_type", "method", "ipc", "eval_model"]
COLUMNS = CELL_KEYS + [
    "mean",  # fraction in [0, 1], over the pooled per-seed accuracies
    "std",  # population std (ddof=0) of the pooled accuracies, as a fraction
    "n_seeds",
    "n_runs",
    "distill_seconds",  # mean over runs that report it; NaN when none do
    "distill_reused",  # every run took its set from an earlier run's distillation (its seconds are that run's)
    "eval_seconds",
    "peak_gpu_memory_bytes",  # largest over runs that report it; NaN when none do
    "peak_cpu_memory_bytes",  # largest max RSS over runs that report it; NaN when none do
    "git_commit",  # of the newest record
    "command",  # of the newest record
    "latest",  # `created` of the newest record
]
# DD-Ranking's fair scores (from accuracies as fractions): mean over the records that report them, NaN when none do.
SCORE_COLUMNS = ("hlr", "ior", "lrs", "ars")
COLUMNS += list(SCORE_COLUMNS)

MISSING_CELL = "—"
REUSED_MARK = "†"  # after a distillation time: the distillation was shared with another protocol's cell


def _sort_key(row: dict[str, Any]) -> tuple:
    return (
        row["dataset"].lower(),
        row["dataset"],
        row["protocol"],
        row["label_type"],
        row["method"].lower(),
        row["method"],
        int(row["ipc"]),
        _model_order(row["eval_model"]),
    )


def _model_order(name: str) -> tuple[int, str]:
    """ConvNet (the default evaluation model) first, then the others by name."""
    return (0 if name.lower() == DEFAULT_EVAL_MODEL else 1, name.lower())


def _mean_or_nan(values: Iterable[float | None]) -> float:
    present = [float(v) for v in values if v is not None]
    return math.fsum(present) / len(present) if present else math.nan


def _max_or_nan(values: Iterable[float | None]) -> float:
    present = [float(v) for v in values if v is not None]
    return max(present) if present else math.nan


def shown_method(record: dict[str, Any]) -> str:
    """The method's name as the leaderboard shows it: shortened runs are labelled with what was shortened."""
    shortened = record.get("shortened")
    return f"{record['method']} [{shortened}]" if shortened else record["method"]


def leaderboard_frame(records: Iterable[dict[str, Any]], include_shortened: bool = False) -> pd.DataFrame:
    """One row per (dataset, protocol, label_type, method, ipc, eval_model); see COLUMNS.

    Records of shortened runs (smoke=true, or a protocol's budget cut on the command line) are left out unless
    `include_shortened`, and then shown as their own rows, labelled `method [what was shortened]`.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("shortened") and not include_shortened:
            continue
        key = tuple(shown_method(record) if k == "method" else record[k] for k in CELL_KEYS)
        groups.setdefault(key, []).append(record)

    rows = []
    for key, group in groups.items():
        pooled = [float(a) for record in group for a in record["accuracies"]]
        mean, std = accuracy_stats(pooled)
        newest = max(group, key=lambda r: (parse_time(r["created"]), str(r["run_id"])))
        row = dict(zip(CELL_KEYS, key))
        row.update(
            mean=mean,
            std=std,
            n_seeds=len(pooled),
            n_runs=len(group),
            distill_seconds=_mean_or_nan(r.get("distill_seconds") for r in group),
            distill_reused=all(bool(r.get("distill_reused")) for r in group),
            eval_seconds=_mean_or_nan(r.get("eval_seconds") for r in group),
            peak_gpu_memory_bytes=_max_or_nan(r.get("peak_gpu_memory_bytes") for r in group),
            peak_cpu_memory_bytes=_max_or_nan(r.get("peak_cpu_memory_bytes") for r in group),
            git_commit=newest.get("git_commit"),
            command=newest.get("command"),
            latest=newest["created"],
            **{name: _mean_or_nan((r.get("scores") or {}).get(name) for r in group) for name in SCORE_COLUMNS},
        )
        rows.append(row)
    rows.sort(key=_sort_key)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["ipc"] = frame["ipc"].astype("int64")
    frame["n_seeds"] = frame["n_seeds"].astype("int64")
    frame["n_runs"] = frame["n_runs"].astype("int64")
    return frame.reset_index(drop=True)


def format_cell(mean: float, std: float, n_seeds: int) -> str:
    """`84.31 ± 0.22 (n=5)`: mean and std in percent, n = number of pooled seeds."""
    return f"{mean * 100:.2f} ± {std * 100:.2f} (n={int(n_seeds)})"


def _escape(text: Any) -> str:
    """A table cell or heading: HTML and links escaped (a record can hold any text), pipes escaped."""
    text = html.escape(str(text), quote=False).replace("](", "]\\(")
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _code(text: Any) -> str:
    """Text inside a code span (which shows HTML literally): only a backtick could end it early."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
    """A pipe table; the first `n_labels` columns are left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join(":---" if i < n_labels else "---:" for i in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_escape(c) for c in row) + " |")
    return "\n".join(lines)


def _method_rows(section: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = {(m, lt) for m, lt in zip(section["method"], section["label_type"])}
    return sorted(pairs, key=lambda p: (p[0].lower(), p[0], p[1]))


def _main_table(section: pd.DataFrame, not_applicable: dict[tuple[str, int], str] | None = None) -> str:
    convnet = section[section["eval_model"].str.lower() == DEFAULT_EVAL_MODEL]
    if convnet.empty:
        return f"_No results evaluated on {DEFAULT_EVAL_MODEL_TITLE} ({DEFAULT_EVAL_MODEL}) yet._"
    na = not_applicable or {}
    ipcs = sorted({int(i) for i in convnet["ipc"]} | {ipc for _, ipc in na})
    cells = {
        (r.method, r.label_type, int(r.ipc)): format_cell(r.mean, r.std, r.n_seeds) for r in convnet.itertuples()
    }
    methods = _method_rows(convnet)
    rows = [
        [method, labels] + [cells.get((method, labels, ipc), "n/a" if (method, ipc) in na else MISSING_CELL)
                            for ipc in ipcs]
        for method, labels in methods
    ]
    times = {
        (r.method, r.label_type, int(r.ipc)):
            _seconds(r.distill_seconds) + (REUSED_MARK if r.distill_reused else "") + " + " + _seconds(r.eval_seconds)
        for r in convnet.itertuples()
    }
    time_rows = [[method, labels] + [times.get((method, labels, ipc), MISSING_CELL) for ipc in ipcs]
                 for method, labels in methods]
    header = ["Method", "Labels"] + [f"IPC {ipc}" for ipc in ipcs]
    caption = (
        f"Test accuracy (%) of {DEFAULT_EVAL_MODEL_TITLE} trained on the distilled data: "
        "mean ± std (population, ddof=0) over all seeds of all runs; n = seeds."
    )
    notes = [f"n/a: {method} at IPC {ipc}: {why}" for (method, ipc), why in sorted(na.items())
             if method in {m for m, _ in methods}]
    text = caption + "\n\n" + _table(header, rows, n_labels=2)
    if notes:
        text += "\n\n" + "\n".join(f"- {_escape(n)}" for n in notes)
    text += "\n\nSeconds per cell (distill + evaluate, mean over runs):\n\n" + _table(header, time_rows, n_labels=2)
    if convnet["distill_reused"].any():
        text += (f"\n\n{REUSED_MARK} the set was distilled once for this method's cells of several protocols "
                 "(`reuse_distilled`); the seconds are that distillation's, counted once in the compute total.")
    return text


def _seconds(value: float) -> str:
    return MISSING_CELL if value is None or not math.isfinite(value) else f"{value:.0f}"


def _cross_table(section: pd.DataFrame) -> str:
    models = sorted(set(section["eval_model"]), key=_model_order)
    cells = {
        (r.method, r.label_type, int(r.ipc), r.eval_model): format_cell(r.mean, r.std, r.n_seeds)
        for r in section.itertuples()
    }
    keys = sorted(
        {(r.method, r.label_type, int(r.ipc)) for r in section.itertuples()},
        key=lambda k: (k[0].lower(), k[0], k[1], k[2]),
    )
    rows = [
        [method, labels, str(ipc)] + [cells.get((method, labels, ipc, m), MISSING_CELL) for m in models]
        for method, labels, ipc in keys
    ]
    header = ["Method", "Labels", "IPC"] + models
    caption = "Cross-architecture: test accuracy (%) per evaluation model."
    return caption + "\n\n" + _table(header, rows, n_labels=3)


def render_markdown(frame: pd.DataFrame, not_applicable: dict[tuple[str, str, int], str] | None = None,
                    title: str = "# ddbench leaderboard") -> str:
    """Per (dataset, protocol): a method × IPC table on ConvNet (with seconds per cell), then a cross-architecture
    table. not_applicable: (dataset, method, ipc) → why that cell is invalid (shown as n/a)."""
    parts = [title]
    if frame.empty:
        parts.append("_No records._")
        return "\n\n".join(parts) + "\n"
    sections = sorted(
        {(d, p) for d, p in zip(frame["dataset"], frame["protocol"])}, key=lambda s: (s[0].lower(), s[0], s[1])
    )
    for dataset, protocol in sections:
        section = frame[(frame["dataset"] == dataset) & (frame["protocol"] == protocol)]
        parts.append(f"## {_escape(dataset)} · protocol {_code(protocol)}")
        na = {(m, ipc): why for (d, m, ipc), why in (not_applicable or {}).items() if d == dataset}
        parts.append(_main_table(section, na))
        parts.append(_cross_table(section))
    return "\n\n".join(parts) + "\n"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (starting with = + - @ tab CR) gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(frame: pd.DataFrame) -> str:
    """The full frame as CSV (accuracies as fractions, full precision); text cells can't start a formula."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(neutralise_formula)
    return safe.to_csv(index=False, lineterminator="\n")
