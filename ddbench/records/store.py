"""Reading and writing result records: one JSON file per (run, evaluation architecture).

Each record is written atomically (temporary file in the same folder, then a
rename) under a file name that includes the run id, so concurrent jobs on a
cluster never overwrite or half-write each other's records.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ddbench.records.schema import validate_record
from ddbench.utils import DDBenchError, atomic_write_json

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def sanitize(name: Any) -> str:
    """A file-name-safe form of `name`: runs of characters outside [A-Za-z0-9_.-] become '_'.

    A result that is empty or starts with '.' (hidden files, '..') gets a leading '_'.
    """
    safe = _UNSAFE.sub("_", str(name))
    if not safe or safe.startswith("."):
        safe = "_" + safe
    return safe


def record_path(record: dict[str, Any], records_dir: str | Path) -> Path:
    """`<records_dir>/<dataset>/<method>/<dataset>_<method>_ipc<ipc>_<protocol>_<eval_model>_<run_id>.json`."""
    dataset, method = sanitize(record["dataset"]), sanitize(record["method"])
    ipc = "ref" if record.get("ipc") is None else f"ipc{int(record['ipc'])}"
    parts = [dataset, method, ipc, record["protocol"], record["eval_model"], record["run_id"]]
    name = "_".join(sanitize(p) for p in parts) + ".json"
    return Path(records_dir) / dataset / method / name


def write_record(record: dict[str, Any], records_dir: str | Path) -> Path:
    """Validate `record` and write it atomically under `records_dir`; returns the file's path."""
    record = validate_record(record)
    path = record_path(record, records_dir)
    return atomic_write_json(path, record)


def _missing_dir_error(records_dir: Path) -> DDBenchError:
    return DDBenchError(
        f"no records folder at {records_dir}. Runs write one JSON record per (run, eval model) "
        "into the folder set by the config option paths.records=DIR (e.g. `ddbench-run paths.records=DIR ...`); "
        "point --records at that folder."
    )


def read_records(records_dir: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """Load and validate every `*.json` record below `records_dir`, in sorted path order.

    strict=True: a file that is not valid JSON or not a valid record raises
    DDBenchError naming the file. strict=False: such files are skipped with a
    logged warning. Hidden files (names starting with '.') are ignored.
    """
    root = Path(records_dir)
    if not root.exists():
        raise _missing_dir_error(root)
    if not root.is_dir():
        raise DDBenchError(f"records path {root} is a file, not a folder; point it at the folder of record JSON files.")
    records: list[dict[str, Any]] = []
    paths = sorted(p for p in root.rglob("*.json") if p.is_file() and not p.name.startswith("."))
    for path in paths:
        try:
            try:
                with path.open("r", encoding="utf-8") as handle:
                    obj = json.load(handle)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DDBenchError(f"cannot read record {path}: {err}") from err
            records.append(validate_record(obj, source=str(path)))
        except DDBenchError as err:
            if strict:
                raise
            log.warning("skipping unreadable record: %s", err)
    return records
