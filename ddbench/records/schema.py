"""The result-record schema: one JSON object per (run, evaluation architecture).

`SCHEMA` is the single table of fields: name → `Field(types, required, doc)`.
`validate_record` checks a record against it (presence, types, ranges and the
consistency of `mean`/`std` with `accuracies`); `make_record` fills the
bookkeeping fields and validates.

Accuracies are fractions in [0, 1], one per evaluation seed. `mean` is their
arithmetic mean and `std` their *population* standard deviation (ddof=0,
i.e. ``numpy.std(accuracies)``), both as fractions; the leaderboard renders
them in percent.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, NamedTuple

from ddbench.utils import DDBenchError, git_commit, mean_std, stable_hash, versions

SCHEMA_VERSION = 1
LABEL_TYPES = ("hard", "soft")
REFERENCE_KINDS = ("whole_dataset", "teacher")  # rows printed beside the methods (ddbench-reference)
# Absolute tolerance when checking `mean`/`std` against `accuracies`.
STAT_TOLERANCE = 1e-6

NoneType = type(None)


class Field(NamedTuple):
    types: tuple[type, ...]  # accepted JSON types; `float` also accepts int (never bool)
    required: bool
    doc: str  # what is expected, quoted in error messages


SCHEMA: dict[str, Field] = {
    "schema_version": Field((int,), True, f"the int {SCHEMA_VERSION}"),
    "run_id": Field((str,), True, "a non-empty string identifying the run"),
    "method": Field((str,), True, "the distillation method name, a non-empty string"),
    "dataset": Field((str,), True, "the dataset name, a non-empty string"),
    "ipc": Field((int, NoneType), True, "images per class, an int >= 1 (null only for a reference row)"),
    "label_type": Field((str,), True, "one of " + ", ".join(repr(t) for t in LABEL_TYPES)),
    "protocol": Field((str,), True, "the evaluation protocol name, e.g. 'dc'"),
    "eval_model": Field((str,), True, "the evaluation architecture, e.g. 'convnet'"),
    "accuracies": Field((list,), True, "a non-empty list of test accuracies as fractions in [0, 1], one per seed"),
    "seeds": Field((list,), True, "a list of int evaluation seeds, as long as accuracies"),
    "mean": Field((float,), True, "the mean of accuracies (a fraction)"),
    "std": Field((float,), True, "the population std (ddof=0) of accuracies (a fraction)"),
    "distill_seconds": Field((float, NoneType), True, "seconds spent distilling, a float >= 0, or null"),
    "eval_seconds": Field((float,), True, "seconds spent evaluating, a float >= 0"),
    "score_seconds": Field(
        (float, NoneType), False,
        "seconds spent training the runs behind the fair scores (beyond eval_seconds), a float >= 0, or null",
    ),
    "peak_gpu_memory_bytes": Field((int, NoneType), True, "peak GPU memory in bytes, an int >= 0, or null"),
    "peak_cpu_memory_bytes": Field((int, NoneType), False, "peak CPU memory (max RSS) of the run in bytes, or null"),
    "device": Field((str,), True, "a description of the device the run used"),
    "config_hash": Field((str,), True, "a non-empty hash of the resolved config"),
    "config": Field((dict,), True, "the full resolved config, an object"),
    "versions": Field((dict,), True, "library versions, an object"),
    "git_commit": Field((str, NoneType), True, "the git commit of the source tree, or null"),
    "created": Field((str,), True, "an ISO 8601 timestamp, e.g. '2024-05-01T12:00:00+00:00'"),
    "artifact": Field((str, NoneType), True, "the path of the distilled artifact, or null"),
    "seed": Field((int,), True, "the run's seed, an int"),
    "scores": Field((dict,), False, "extra named scores, an object (default {})"),
    "command": Field((str, NoneType), False, "the command line that reproduces the run, or null"),
    "distill_reused": Field(
        (bool,), False, "true when the run evaluated a set distilled by an earlier run (whose distill_seconds it reports)",
    ),
    "reference": Field(
        (str, NoneType), False,
        "null for a method's run, or the reference row it holds: " + ", ".join(repr(k) for k in REFERENCE_KINDS),
    ),
    "eval_batch_size": Field((int, NoneType), False, "the batch the evaluation networks trained with, or null"),
    "teacher": Field(
        (dict, NoneType), False,
        "null, or the teacher that made the targets: {models, test_accuracy, train_accuracy} (fractions)",
    ),
    "shortened": Field(
        (str, NoneType), False,
        "null for a full-protocol run, else what was cut (e.g. 'smoke=true' or 'eval.epochs=30'), a string",
    ),
    "source": Field(
        (str, NoneType), False,
        "where the record came from: null for a ddbench command, 'api' for the Python API (ddbench.evaluate/run)",
    ),
    "images_digest": Field(
        (str, NoneType), False, "a content hash of the evaluated images (dtype, shape, values), or null",
    ),
}

# Defaults of the optional fields (copied per record).
OPTIONAL_DEFAULTS: dict[str, Any] = {
    "scores": {}, "command": None, "shortened": None, "peak_cpu_memory_bytes": None, "distill_reused": False,
    "teacher": None, "reference": None, "eval_batch_size": None, "source": None, "images_digest": None,
    "score_seconds": None,
}

_NON_EMPTY = ("run_id", "method", "dataset", "protocol", "eval_model", "device", "config_hash")


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "int", float: "float", str: "string", list: "list", dict: "object", NoneType: "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    for t in types:
        if t is NoneType and value is None:
            return True
        if t is float and _is_number(value):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (int, float, NoneType) and isinstance(value, t):
            return True
    return False


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; a trailing 'Z' is accepted, naive times are taken as UTC."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def accuracy_stats(accuracies: list[float]) -> tuple[float, float]:
    """(mean, population std with ddof=0) of a non-empty list of accuracies."""
    return mean_std(accuracies)


def _check_values(rec: dict[str, Any], problems: list[str]) -> None:
    """Range and consistency checks; only called for fields whose type is already right."""

    def bad(name: str, message: str) -> None:
        problems.append(f"field {name!r}: {message}")

    if "schema_version" in rec and rec["schema_version"] != SCHEMA_VERSION:
        bad(
            "schema_version",
            f"this ddbench reads schema version {SCHEMA_VERSION}, got {rec['schema_version']!r}",
        )
    for name in _NON_EMPTY:
        if name in rec and not rec[name].strip():
            bad(name, "must be a non-empty string")
    if rec.get("reference") is not None and rec["reference"] not in REFERENCE_KINDS:
        bad("reference", f"must be null or one of {', '.join(map(repr, REFERENCE_KINDS))}, got {rec['reference']!r}")
    if "ipc" in rec and rec["ipc"] is None and rec.get("reference") is None:
        bad("ipc", "images per class must be an int >= 1 (null only in a reference row, with 'reference' set)")
    elif "ipc" in rec and rec["ipc"] is not None and rec["ipc"] < 1:
        bad("ipc", f"images per class must be an int >= 1, got {rec['ipc']!r}")
    if "label_type" in rec and rec["label_type"] not in LABEL_TYPES:
        bad("label_type", f"must be one of {', '.join(map(repr, LABEL_TYPES))}, got {rec['label_type']!r}")

    accs = rec.get("accuracies")
    accs_ok = False
    if accs is not None:
        if not accs:
            bad("accuracies", "must be a non-empty list (one accuracy per seed)")
        else:
            wrong = [(i, a) for i, a in enumerate(accs) if not _is_number(a) or not math.isfinite(a)]
            out_of_range = [(i, a) for i, a in enumerate(accs) if _is_number(a) and not (0.0 <= a <= 1.0)]
            if wrong:
                i, a = wrong[0]
                bad("accuracies", f"must hold finite numbers; item {i} is {a!r}")
            elif out_of_range:
                i, a = out_of_range[0]
                hint = f" (did you mean {a / 100:g}?)" if 1.0 < a <= 100.0 else ""
                bad(
                    "accuracies",
                    f"accuracies are fractions in [0, 1], not percentages; item {i} is {a!r}{hint}",
                )
            else:
                accs_ok = True

    seeds = rec.get("seeds")
    if seeds is not None:
        wrong = [(i, s) for i, s in enumerate(seeds) if not isinstance(s, int) or isinstance(s, bool)]
        if wrong:
            i, s = wrong[0]
            bad("seeds", f"must be a list of ints; item {i} is {s!r}")
        if accs is not None and len(seeds) != len(accs):
            bad("seeds", f"must have one seed per accuracy: {len(seeds)} seeds for {len(accs)} accuracies")

    for name in ("mean", "std", "eval_seconds", "distill_seconds", "score_seconds"):
        value = rec.get(name)
        if value is not None and not math.isfinite(value):
            bad(name, f"must be a finite number, got {value!r}")
    for name in ("std", "eval_seconds", "distill_seconds", "score_seconds", "peak_gpu_memory_bytes",
                 "peak_cpu_memory_bytes"):
        value = rec.get(name)
        if value is not None and value < 0:
            bad(name, f"must be >= 0, got {value!r}")

    if accs_ok:
        mean, std = accuracy_stats(accs)
        for name, expected in (("mean", mean), ("std", std)):
            value = rec.get(name)
            if value is None or not math.isfinite(value):
                continue
            if abs(value - expected) > STAT_TOLERANCE:
                what = "mean" if name == "mean" else "population std (ddof=0)"
                bad(
                    name,
                    f"is {value!r} but the {what} of accuracies is {expected!r} "
                    f"(tolerance {STAT_TOLERANCE:g}); recompute it, or build the record with make_record()",
                )

    scores = rec.get("scores")
    if scores is not None:
        for name, value in scores.items():
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                bad("scores", f"must map names to finite numbers (or null); {name!r} is {value!r:.80}")

    teacher = rec.get("teacher")
    if teacher is not None:
        for name in ("test_accuracy", "train_accuracy"):
            value = teacher.get(name)
            if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
                bad("teacher", f"{name} must be a fraction in [0, 1] or null, got {value!r:.80}")

    if "created" in rec:
        try:
            parse_time(rec["created"])
        except ValueError:
            bad("created", f"must be an ISO 8601 timestamp, e.g. '2024-05-01T12:00:00+00:00'; got {rec['created']!r}")


def validate_record(obj: Any, source: str = "<record>") -> dict[str, Any]:
    """Check `obj` against SCHEMA and return a copy with optional fields defaulted.

    Raises DDBenchError naming `source` (usually the file), each offending field
    and what it should hold. All problems are reported at once.
    """
    if not isinstance(obj, dict):
        raise DDBenchError(f"invalid record {source}: expected a JSON object, got {type(obj).__name__}")
    problems: list[str] = []
    checked: dict[str, Any] = {}
    for name, spec in SCHEMA.items():
        if name not in obj:
            if spec.required:
                problems.append(f"field {name!r} is missing; expected {spec.doc}")
            continue
        value = obj[name]
        if not _has_type(value, spec.types):
            problems.append(
                f"field {name!r} must be {_type_name(spec.types)} ({spec.doc}), got {type(value).__name__} {value!r:.80}"
            )
            continue
        checked[name] = value
    unknown = sorted(set(obj) - set(SCHEMA))
    for name in unknown:
        problems.append(
            f"field {name!r} is not part of record schema {SCHEMA_VERSION}; "
            "remove it, or put extra numbers under 'scores'"
        )
    _check_values(checked, problems)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DDBenchError(f"invalid record {source}:\n{listing}")

    record = dict(obj)
    for name, default in OPTIONAL_DEFAULTS.items():
        if name not in record:
            record[name] = dict(default) if isinstance(default, dict) else default
    return record


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(**fields: Any) -> dict[str, Any]:
    """Build and validate a record from the run's fields.

    Fills, unless given: schema_version, created (now, UTC), versions, git_commit,
    config_hash (stable_hash of config), mean and std (population std, ddof=0)
    from accuracies, and the optional scores/command. Accuracies and seeds are
    stored as plain float/int lists.
    """
    record = dict(fields)
    if isinstance(record.get("accuracies"), (list, tuple)):
        record["accuracies"] = [float(a) if _is_number(a) else a for a in record["accuracies"]]
        if record["accuracies"] and all(_is_number(a) for a in record["accuracies"]):
            mean, std = accuracy_stats(record["accuracies"])
            record.setdefault("mean", mean)
            record.setdefault("std", std)
    if isinstance(record.get("seeds"), tuple):
        record["seeds"] = list(record["seeds"])
    record.setdefault("schema_version", SCHEMA_VERSION)
    record.setdefault("created", now_iso())
    if "versions" not in record:
        record["versions"] = versions()
    if "git_commit" not in record:
        record["git_commit"] = git_commit()
    if "config_hash" not in record and isinstance(record.get("config"), dict):
        record["config_hash"] = stable_hash(record["config"])
    return validate_record(record, source="make_record()")
