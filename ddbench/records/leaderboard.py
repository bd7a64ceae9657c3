"""Aggregate result records into a leaderboard and render it as Markdown or CSV.

A leaderboard cell is one (dataset, protocol, label_type, method, ipc, eval_model).
All records of a cell pool their per-seed accuracies: the cell's mean and std
(population std, ddof=0) are taken over that pooled list, so two runs with five
seeds each give one cell with n=10. Records relabelled by another teacher than the cell's newest record (a
protocol's teacher recipe changed) do not pool: they show as their own row, `method [earlier teacher, A %]`.
A cell whose teacher is not the one of its table's `teacher` row (not rerun since the protocol's teacher changed)
is marked EARLIER_TEACHER_MARK, with a line under the table naming that teacher's accuracy.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Callable, Iterable

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
    "score_seconds",  # training the runs behind the fair scores: mean over runs that report it; NaN when none do
    "peak_gpu_memory_bytes",  # largest over runs that report it; NaN when none do
    "peak_cpu_memory_bytes",  # largest max RSS over runs that report it; NaN when none do
    "git_commit",  # of the newest record
    "command",  # of the newest record
    "latest",  # `created` of the newest record
    "teacher",  # the newest record's teacher summary as JSON (models, recipe, test accuracy); None without one
]
# DD-Ranking's fair scores (from accuracies as fractions): mean over the records that report them, NaN when none do.
SCORE_COLUMNS = ("hlr", "ior", "lrs", "ars")
COLUMNS += list(SCORE_COLUMNS)

MISSING_CELL = "—"
REUSED_MARK = "†"  # after a distillation time: the distillation was shared with another protocol's cell
EARLIER_TEACHER_MARK = "‡"  # after an accuracy: relabelled by another teacher than the table's `teacher` row
EARLIER_TEACHER_LABEL = " [earlier teacher"  # after a method: runs of a cell that a newer teacher's runs replace


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


def _recency(record: dict[str, Any]) -> tuple:
    """Orders records by creation (run id breaks ties): the newest record of a group is its max."""
    return parse_time(record["created"]), str(record["run_id"])


def _teacher_of(record: dict[str, Any]) -> str | None:
    """The teacher a record was relabelled by (its `teacher` summary, as one comparable string), or None."""
    teacher = record.get("teacher")
    return json.dumps(teacher, sort_keys=True, default=str) if teacher else None


def labelled_by_teacher(records: list[dict[str, Any]], cell: Callable[[dict[str, Any]], tuple]) -> list[str]:
    """Each record's shown method, with `[earlier teacher, A %]` added where the record's teacher differs from that
    of the newest record of its cell (`cell(record)`): runs relabelled by different teachers never pool."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = cell(record)
        if key not in newest or _recency(record) > _recency(newest[key]):
            newest[key] = record
    labels = []
    for record in records:
        label = shown_method(record)
        if _teacher_of(record) != _teacher_of(newest[cell(record)]):
            accuracy = (record.get("teacher") or {}).get("test_accuracy")
            label += EARLIER_TEACHER_LABEL + (f", {100 * float(accuracy):.2f} %]" if accuracy is not None else "]")
        labels.append(label)
    return labels


def leaderboard_frame(records: Iterable[dict[str, Any]], include_shortened: bool = False) -> pd.DataFrame:
    """One row per (dataset, protocol, label_type, method, ipc, eval_model); see COLUMNS.

    Records of shortened runs (smoke=true, or a protocol's budget cut on the command line) are left out unless
    `include_shortened`, and then shown as their own rows, labelled `method [what was shortened]`.
    """
    kept = [r for r in records if not (r.get("shortened") and not include_shortened)
            and not r.get("reference")]  # whole-dataset and teacher rows: see reference_frame
    labels = labelled_by_teacher(kept, lambda r: tuple(shown_method(r) if k == "method" else r[k] for k in CELL_KEYS))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record, label in zip(kept, labels):
        key = tuple(label if k == "method" else record[k] for k in CELL_KEYS)
        groups.setdefault(key, []).append(record)

    rows = []
    for key, group in groups.items():
        pooled = [float(a) for record in group for a in record["accuracies"]]
        mean, std = accuracy_stats(pooled)
        newest = max(group, key=_recency)
        row = dict(zip(CELL_KEYS, key))
        row.update(
            mean=mean,
            std=std,
            n_seeds=len(pooled),
            n_runs=len(group),
            distill_seconds=_mean_or_nan(r.get("distill_seconds") for r in group),
            distill_reused=all(bool(r.get("distill_reused")) for r in group),
            eval_seconds=_mean_or_nan(r.get("eval_seconds") for r in group),
            score_seconds=_mean_or_nan(r.get("score_seconds") for r in group),
            peak_gpu_memory_bytes=_max_or_nan(r.get("peak_gpu_memory_bytes") for r in group),
            peak_cpu_memory_bytes=_max_or_nan(r.get("peak_cpu_memory_bytes") for r in group),
            git_commit=newest.get("git_commit"),
            command=newest.get("command"),
            latest=newest["created"],
            teacher=_teacher_of(newest),
            **{name: _mean_or_nan((r.get("scores") or {}).get(name) for r in group) for name in SCORE_COLUMNS},
        )
        rows.append(row)
    rows.sort(key=_sort_key)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["ipc"] = frame["ipc"].astype("int64")
    frame["n_seeds"] = frame["n_seeds"].astype("int64")
    frame["n_runs"] = frame["n_runs"].astype("int64")
    return frame.reset_index(drop=True)


REFERENCE_COLUMNS = ["dataset", "protocol", "reference", "method", "eval_model", "mean", "std", "n_seeds",
                     "command", "git_commit", "latest", "teacher"]
REFERENCE_ORDER = ("whole_dataset", "teacher")


def reference_frame(records: Iterable[dict[str, Any]], include_shortened: bool = False) -> pd.DataFrame:
    """The reference rows (records with `reference` set, from ddbench-reference): one row per (dataset, protocol,
    reference, eval_model), seeds pooled over records like the method cells; see REFERENCE_COLUMNS."""
    kept = [r for r in records if r.get("reference") and not (r.get("shortened") and not include_shortened)]
    labels = labelled_by_teacher(kept, lambda r: (r["dataset"], r["protocol"], r["reference"], shown_method(r),
                                                  r["eval_model"]))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record, label in zip(kept, labels):
        key = (record["dataset"], record["protocol"], record["reference"], label, record["eval_model"])
        groups.setdefault(key, []).append(record)
    rows = []
    for (dataset, protocol, kind, method, model), group in groups.items():
        pooled = [float(a) for record in group for a in record["accuracies"]]
        mean, std = accuracy_stats(pooled)
        newest = max(group, key=_recency)
        rows.append(dict(dataset=dataset, protocol=protocol, reference=kind, method=method, eval_model=model,
                         mean=mean, std=std, n_seeds=len(pooled), command=newest.get("command"),
                         git_commit=newest.get("git_commit"), latest=newest["created"], teacher=_teacher_of(newest)))
    rows.sort(key=lambda r: (r["dataset"].lower(), r["protocol"], REFERENCE_ORDER.index(r["reference"]),
                             _model_order(r["eval_model"])))
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


def section_references(references: pd.DataFrame | None, dataset: str, protocol: str) -> pd.DataFrame:
    """The reference rows of one (dataset, protocol) section (empty when there are none)."""
    if references is None or references.empty:
        return pd.DataFrame(columns=REFERENCE_COLUMNS)
    return references[(references["dataset"] == dataset) & (references["protocol"] == protocol)]


def current_teacher(references: pd.DataFrame | None) -> str | None:
    """The teacher summary (as in the frame's `teacher` column) of a section's newest `teacher` reference row, or
    None when the section has none."""
    if references is None or references.empty:
        return None
    teachers = references[references["reference"] == "teacher"]
    if teachers.empty:
        return None
    return teachers.loc[teachers["latest"].map(parse_time).idxmax(), "teacher"]


def earlier_teacher(row: Any, teacher: str | None) -> float | None:
    """The test accuracy (fraction; NaN when its record has none) of the teacher that relabelled a frame row when it
    is not `teacher` (current_teacher of its section); None when it is, when either is unknown, or when the row is
    already labelled as an earlier teacher's runs of its cell."""
    if (teacher is None or not isinstance(row.teacher, str) or row.teacher == teacher
            or EARLIER_TEACHER_LABEL in row.method):
        return None
    return float(json.loads(row.teacher).get("test_accuracy", math.nan))


def cell_rows(rows: pd.DataFrame) -> dict[tuple[str, str, int], Any]:
    """(method, labels, ipc) → frame row, for the rows of one evaluation model."""
    return {(r.method, r.label_type, int(r.ipc)): r for r in rows.itertuples()}


def earlier_teacher_cells(cells: dict[tuple, Any], teacher: str | None) -> dict[tuple, float]:
    """key → the teacher accuracy of the keyed frame rows (cells: (method, labels, ipc[, model]) → row) that an
    earlier teacher than `teacher` relabelled (see earlier_teacher)."""
    return {key: accuracy for key, r in cells.items() if (accuracy := earlier_teacher(r, teacher)) is not None}


def earlier_teacher_line(marked: dict[tuple, float]) -> str | None:
    """What a table's EARLIER_TEACHER_MARK means, said under it (after the mark): marked = (method, labels, ipc[,
    model]) → the teacher accuracy of the marked cells."""
    if not marked:
        return None
    names = {key: f"{key[0]} IPC {key[2]}" + "".join(f" {m}" for m in key[3:]) for key in marked}
    cells = "; ".join(f"{names[key]}: {accuracy * 100:.2f} %" if math.isfinite(accuracy) else names[key]
                      for key, accuracy in marked.items())
    return (f"relabelled by an earlier teacher than the `teacher` row ({cells}): the cell has "
            "not been rerun since the protocol's teacher changed.")


REFERENCE_ROWS = "reference rows"  # the notes key of a board's note on a section's whole-dataset and teacher rows


def section_notes(notes: dict[tuple[str, str, str], str] | None, dataset: str, protocol: str,
                  shown: Iterable[str], has_references: bool) -> list[tuple[str, str]]:
    """(row, note) pairs under one (dataset, protocol) section's table: a board's notes on the `shown` methods,
    by method, then its note on the reference rows when the section has them (key REFERENCE_ROWS)."""
    mine = {m: n for (d, p, m), n in sorted((notes or {}).items()) if (d, p) == (dataset, protocol)}
    wanted = set(shown)
    out = [(m, n) for m, n in mine.items() if m in wanted and m != REFERENCE_ROWS]
    if has_references and mine.get(REFERENCE_ROWS):
        out.append((REFERENCE_ROWS, mine[REFERENCE_ROWS]))
    return out


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


def reference_label(r: Any) -> str:
    """`whole dataset`, or `teacher (convnet)` when the teacher is another architecture than the table's."""
    return r.method if r.reference == "whole_dataset" else f"{r.method} ({r.eval_model})"


def _main_table(section: pd.DataFrame, not_applicable: dict[tuple[str, int], str] | None = None,
                references: pd.DataFrame | None = None, notes: dict[tuple[str, str, str], str] | None = None,
                planned_ipcs: Iterable[int] = ()) -> str:
    convnet = section[section["eval_model"].str.lower() == DEFAULT_EVAL_MODEL]
    if convnet.empty:
        return f"_No results evaluated on {DEFAULT_EVAL_MODEL_TITLE} ({DEFAULT_EVAL_MODEL}) yet._"
    na = not_applicable or {}
    ipcs = table_ipcs(convnet, na, planned_ipcs)
    found = cell_rows(convnet)
    stale = earlier_teacher_cells(found, current_teacher(references))
    cells = {key: format_cell(r.mean, r.std, r.n_seeds) + (" " + EARLIER_TEACHER_MARK if key in stale else "")
             for key, r in found.items()}
    methods = _method_rows(convnet)
    rows = [
        [method, labels] + [cells.get((method, labels, ipc), "n/a" if (method, ipc) in na else MISSING_CELL)
                            for ipc in ipcs]
        for method, labels in methods
    ]
    refs = [] if references is None else [
        r for r in references.itertuples()
        if r.reference == "teacher" or r.eval_model.lower() == DEFAULT_EVAL_MODEL]
    for r in refs:  # the same number at every IPC: the reference does not depend on it
        rows.append([reference_label(r), "hard" if r.reference == "whole_dataset" else "—"]
                    + [format_cell(r.mean, r.std, r.n_seeds)] * len(ipcs))
    times = {
        key: _seconds(r.distill_seconds) + (REUSED_MARK if r.distill_reused else "") + " + " + _seconds(r.eval_seconds)
        + (" + " + _seconds(r.score_seconds) if r.score_seconds > 0 else "")  # NaN: not measured
        for key, r in found.items()
    }
    time_rows = [[method, labels] + [times.get((method, labels, ipc), MISSING_CELL) for ipc in ipcs]
                 for method, labels in methods]
    header = ["Method", "Labels"] + [f"IPC {ipc}" for ipc in ipcs]
    caption = (
        f"Test accuracy (%) of {DEFAULT_EVAL_MODEL_TITLE} trained on the distilled data: "
        "mean ± std (population, ddof=0) over all seeds of all runs; n = seeds; — = not run yet."
    )
    shown = {m for m, _ in methods}
    dataset, protocol = section["dataset"].iloc[0], section["protocol"].iloc[0]
    lines = [f"n/a: {method} at IPC {ipc}: {why}" for (method, ipc), why in sorted(na.items()) if method in shown]
    has_references = references is not None and not references.empty
    lines += [f"{row}: {note}" for row, note in section_notes(notes, dataset, protocol, shown, has_references)]
    lines += [f"{EARLIER_TEACHER_MARK} {line}" for line in [earlier_teacher_line(stale)] if line]
    if refs:
        caption += (" Reference rows (the same at every IPC): `whole dataset` = the network trained on the whole real "
                    "train set with hard labels under this protocol's augmentation; `teacher` = the protocol's teacher "
                    "on the test set (it labels the students' batches).")
    text = caption + "\n\n" + _table(header, rows, n_labels=2)
    if lines:
        text += "\n\n" + "\n".join(f"- {_escape(n)}" for n in lines)
    text += ("\n\nSeconds per cell (distill + evaluate, + the fair scores' training runs where the records measured "
             "them; mean over runs):\n\n" + _table(header, time_rows, n_labels=2))
    if convnet["distill_reused"].any():
        text += (f"\n\n{REUSED_MARK} the set was distilled once for this method's cells of several protocols "
                 "(`reuse_distilled`); the seconds are that distillation's, counted once in the compute total.")
    return text


def table_ipcs(rows: pd.DataFrame, not_applicable: dict[tuple[str, int], str],
               planned_ipcs: Iterable[int] = ()) -> list[int]:
    """The IPC columns of a method × IPC table: those with results, those marked n/a and a board's planned ones
    (so a column whose cells are still running shows as missing, not absent)."""
    return sorted({int(i) for i in rows["ipc"]} | {ipc for _, ipc in not_applicable} | {int(i) for i in planned_ipcs})


def _seconds(value: float) -> str:
    return MISSING_CELL if value is None or not math.isfinite(value) else f"{value:.0f}"


def cross_rows(section: pd.DataFrame, planned: tuple[list[str], list[int]] | None = None
               ) -> tuple[list[str], list[tuple[str, str, int]], dict[tuple, Any]]:
    """(models, row keys (method, labels, ipc), cells (method, labels, ipc, model) → frame row) of a cross table.
    With several models, only the IPCs that some method was evaluated at beyond ConvNet are shown, and every
    method at those IPCs is, with its missing models as missing cells (a cell still running is never left out).
    planned: (models, ipcs) a board evaluates this section on: those models are columns and those IPCs rows even
    before any of their records exist."""
    first = list(planned[0]) if planned else []  # a board's own column order, then any other model's
    models = first + sorted(set(section["eval_model"]) - set(first), key=_model_order)
    cells = {(r.method, r.label_type, int(r.ipc), r.eval_model): r for r in section.itertuples()}
    keys = sorted({(r.method, r.label_type, int(r.ipc)) for r in section.itertuples()},
                  key=lambda k: (k[0].lower(), k[0], k[1], k[2]))
    if len(models) > 1:
        crossed = {k[2] for k in cells if k[3].lower() != DEFAULT_EVAL_MODEL} | set(planned[1] if planned else ())
        keys = [k for k in keys if k[2] in crossed]
    return models, keys, cells


def model_mean(cells: dict[tuple, Any], key: tuple[str, str, int], models: list[str]) -> float | None:
    """The mean accuracy over `models` of one row, only when every model has a result (never a partial mean)."""
    found = [cells[(*key, m)].mean for m in models if (*key, m) in cells]
    return sum(found) / len(found) if len(found) == len(models) else None


def _cross_table(section: pd.DataFrame, references: pd.DataFrame | None = None,
                 planned: tuple[list[str], list[int]] | None = None) -> str | None:
    """None when the section has one evaluation model (the main table already shows it)."""
    models, keys, cells = cross_rows(section, planned)
    if len(models) < 2:
        return None
    shown = {(*key, m): cells[(*key, m)] for key in keys for m in models if (*key, m) in cells}
    marked = earlier_teacher_cells(shown, current_teacher(references))
    rows = []
    for key in keys:
        mean = model_mean(cells, key, models)
        texts = [MISSING_CELL if (r := shown.get((*key, m))) is None else format_cell(r.mean, r.std, r.n_seeds)
                 + (" " + EARLIER_TEACHER_MARK if (*key, m) in marked else "") for m in models]
        rows.append([key[0], key[1], str(key[2])] + texts + [MISSING_CELL if mean is None else f"{mean * 100:.2f}"])
    whole = {} if references is None else {r.eval_model: r for r in references.itertuples()
                                            if r.reference == "whole_dataset"}
    if whole:
        found = [whole[m].mean for m in models if m in whole]
        mean = sum(found) / len(found) if len(found) == len(models) else None
        rows.append(["whole dataset", "hard", "all"]
                    + [format_cell(whole[m].mean, whole[m].std, whole[m].n_seeds) if m in whole else MISSING_CELL
                       for m in models]
                    + [MISSING_CELL if mean is None else f"{mean * 100:.2f}"])
    header = ["Method", "Labels", "IPC"] + models + ["Mean over models"]
    caption = ("Cross-architecture: test accuracy (%) per evaluation model; n = seeds per cell (a board may use "
               "fewer seeds on the extra architectures); — = not run yet; the mean is over complete rows only.")
    line = earlier_teacher_line(marked)
    return caption + "\n\n" + _table(header, rows, n_labels=3) + (
        "" if line is None else f"\n\n- {EARLIER_TEACHER_MARK} {_escape(line)}")


def render_markdown(frame: pd.DataFrame, not_applicable: dict[tuple[str, str, int], str] | None = None,
                    title: str = "# ddbench leaderboard", references: pd.DataFrame | None = None,
                    notes: dict[tuple[str, str, str], str] | None = None,
                    cross: dict[tuple[str, str], tuple[list[str], list[int]]] | None = None,
                    ipcs: dict[tuple[str, str], list[int]] | None = None) -> str:
    """Per (dataset, protocol): a method × IPC table on ConvNet (with seconds per cell and the reference rows),
    then a cross-architecture table where it has more than one evaluation model. not_applicable: (dataset, method,
    ipc) → why that cell is invalid (shown as
    n/a); references: reference_frame() of the same records; notes: (dataset, protocol, method) → a board's note
    on the method's setting, listed under that protocol's table; cross: (dataset, protocol) → the (models, ipcs) a
    board evaluates it on, shown as columns and rows before their records exist; ipcs: (dataset, protocol) → the
    IPCs a board runs it at, shown as columns before their records exist."""
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
        refs = section_references(references, dataset, protocol)
        parts.append(_main_table(section, na, refs, notes, (ipcs or {}).get((dataset, protocol), ())))
        cross_table = _cross_table(section, refs, (cross or {}).get((dataset, protocol)))
        if cross_table is not None:
            parts.append(cross_table)
    return "\n\n".join(parts) + "\n"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (starting with = + - @ tab CR) gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    """The full frame as CSV (accuracies as fractions, full precision); text cells can't start a formula. The
    reference rows follow as rows of method 'whole dataset' / 'teacher' with an empty ipc."""
    if references is not None and not references.empty:
        extra = references.assign(label_type="hard")[[c for c in references.columns if c in frame.columns]]
        frame = pd.concat([frame.astype({"ipc": "Int64"}), extra], ignore_index=True)
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(neutralise_formula)
    return safe.to_csv(index=False, lineterminator="\n")
