"""Boards: a named grid of (method, IPC, protocol) cells on one dataset, run cell by cell and resumable.

A board is a YAML file in `conf/board/` (or any path): the dataset, the methods (each with its own command-line
overrides, protocols and IPCs when they differ from the board's), the IPCs, the protocols, the evaluation
architectures, and the cells a method's spec makes invalid (`not_applicable`, shown as n/a in the tables).

Every cell is one `ddbench-run` command. Its id is a hash of that command's arguments, and the command carries
`board.name=` and `board.cell=`, so the cell's records name it: a cell is done when the records folder holds a
record with its id for every evaluation architecture. Rerunning a board therefore runs only the
cells that are missing (a killed or time-limited run resumes where it stopped); changing a cell's settings gives it
a new id, so it runs again. Cells run with `reuse_distilled=true`, so cells that distill the same set (a method's
`dc` and `kd` cells) distill it once, through the cache.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from ddbench.training.checkpoint import STOPPED_EXIT_CODE
from ddbench.utils import DDBenchError, stable_hash


@dataclass
class MethodEntry:
    """One method's row of a board: extra overrides, protocols/IPCs when they differ from the board's, and a
    note on the setting it runs (rendered under the board's tables, e.g. which of a method's presets it follows):
    one text for every protocol's table, or a mapping protocol → text for notes that hold under one protocol."""

    overrides: list[str] = field(default_factory=list)
    protocols: list[str] | None = None
    ipcs: list[int] | None = None
    note: str | dict[str, str] = ""

    def note_for(self, protocol: str) -> str:
        """The note rendered under `protocol`'s tables ('' for none)."""
        return note_for(self.note, protocol)


def _note(value: Any, source: str, owner: str) -> str | dict[str, str]:
    """A note (a method's, or the board's reference_note; `owner` names it in errors) with YAML folding
    normalised: text, or protocol → text."""
    if isinstance(value, dict):
        if not all(isinstance(v, str) for v in value.values()):
            raise DDBenchError(f"board {source}: {owner} must be a text or map protocols to texts, "
                               f"e.g. {{dc: ...}}.")
        return {str(p): " ".join(text.split()) for p, text in value.items()}
    return " ".join(str(value or "").split())


def note_for(note: str | dict[str, str], protocol: str) -> str:
    """The part of a note rendered under `protocol`'s tables ('' for none)."""
    return note.get(protocol, "") if isinstance(note, dict) else note


@dataclass
class CrossArchitecture:
    """Extra cells that evaluate the board's methods on more architectures: one cell per (method, ipc, protocol,
    model), with the method's own settings (so it shares the main cell's distilled set) and `num_seeds` seeds
    (null: the protocol's), which the rendered table states beside itself."""

    models: list[str]
    ipcs: list[int]
    protocols: list[str] = field(default_factory=lambda: ["dc"])
    num_seeds: int | None = None


@dataclass
class Board:
    name: str
    dataset: str
    methods: dict[str, MethodEntry]
    ipcs: list[int]
    protocols: list[str] = field(default_factory=lambda: ["dc"])
    eval_models: list[str] | None = None  # null = the protocol's own list
    overrides: list[str] = field(default_factory=list)  # passed to every cell
    not_applicable: dict[str, dict[int, str]] = field(default_factory=dict)  # method → ipc → why
    description: str = ""
    cell_timeout: float | None = None  # seconds; a cell running longer is stopped and listed as failed
    cross_architecture: CrossArchitecture | None = None
    references: bool = True  # a reference cell per protocol: whole-dataset (and teacher) rows (ddbench-reference)
    reference_note: str | dict[str, str] = ""  # on the reference rows: one text, or protocol → text

    def protocols_of(self, method: str) -> list[str]:
        """The protocols `method` runs on this board: its own list, else the board's."""
        return self.methods[method].protocols or self.protocols

    @property
    def all_protocols(self) -> list[str]:
        """Every protocol some method runs on this board (the board's, then methods' own), in order of appearance:
        the sections of its tables, each with reference rows."""
        return list(dict.fromkeys(self.protocols + [p for m in self.methods for p in self.protocols_of(m)]))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "Board":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DDBenchError(f"board {source}: unknown key(s) {unknown}; valid keys: {sorted(known)}.")
        missing = [k for k in ("name", "dataset", "methods", "ipcs") if not data.get(k)]
        if missing:
            raise DDBenchError(f"board {source}: missing {missing}; a board names its dataset, methods and ipcs.")
        methods = {}
        for method, entry in (data["methods"] or {}).items():
            entry = dict(entry or {})
            valid = [f.name for f in dataclasses.fields(MethodEntry)]
            bad = sorted(set(entry) - set(valid))
            if bad:
                raise DDBenchError(f"board {source}: method {method!r} has unknown key(s) {bad}; "
                                   f"valid keys: {', '.join(valid)}.")
            methods[str(method)] = MethodEntry(
                overrides=[str(o) for o in entry.get("overrides") or []],
                protocols=None if entry.get("protocols") is None else [str(p) for p in entry["protocols"]],
                ipcs=None if entry.get("ipcs") is None else [int(i) for i in entry["ipcs"]],
                note=_note(entry.get("note"), source, f"method {method!r} note"),
            )
        cross = data.get("cross_architecture")
        if cross is not None:
            known_cross = {f.name for f in dataclasses.fields(CrossArchitecture)}
            if not isinstance(cross, dict) or set(cross) - known_cross or not cross.get("models") or not cross.get("ipcs"):
                raise DDBenchError(f"board {source}: cross_architecture must map models and ipcs (and optionally "
                                   f"protocols, num_seeds); valid keys: {sorted(known_cross)}.")
            cross = CrossArchitecture(models=[str(m) for m in cross["models"]], ipcs=[int(i) for i in cross["ipcs"]],
                                      protocols=[str(p) for p in cross.get("protocols") or ["dc"]],
                                      num_seeds=None if cross.get("num_seeds") is None else int(cross["num_seeds"]))
        fields_ = {k: v for k, v in data.items() if k not in ("methods", "cross_architecture")}
        board = cls(methods=methods, cross_architecture=cross, **fields_)
        board.ipcs = [int(i) for i in board.ipcs]
        board.protocols = [str(p) for p in board.protocols]
        board.not_applicable = {str(m): {int(i): str(why) for i, why in (v or {}).items()}
                                for m, v in (board.not_applicable or {}).items()}
        board.reference_note = _note(board.reference_note, source, "reference_note")
        owners = [(f"method {m!r}", entry.note, board.protocols_of(m)) for m, entry in board.methods.items()]
        for owner, note, runs in owners + [("reference_note", board.reference_note, board.all_protocols)]:
            stray = sorted(set(note) - set(runs)) if isinstance(note, dict) else []
            if stray:
                raise DDBenchError(f"board {source}: {owner} has a note for protocol(s) {stray} it does not "
                                   f"run (its protocols: {runs}); key the note by one of those.")
        return board


@dataclass(frozen=True)
class Cell:
    """One (method, ipc, protocol) of a board; `args` are its command's arguments (without placement).

    kind: main (a method's cell, ddbench-run), cross (the same on more architectures, ddbench-run) or reference
    (a protocol's whole-dataset and teacher rows, ddbench-reference; method 'reference', ipc 0)."""

    board: str
    method: str
    ipc: int
    protocol: str
    args: tuple[str, ...]
    eval_models: tuple[str, ...]
    scores: tuple[str, ...] = ()  # the protocol's fair scores (each one more training run per architecture)
    kind: str = "main"

    @property
    def num_seeds(self) -> int | None:
        """The seeds its command asks for (eval.num_seeds), or None for the protocol's."""
        return next((int(a.split("=", 1)[1]) for a in self.args if a.startswith("eval.num_seeds=")), None)

    @property
    def script(self) -> str:
        return "ddbench-reference" if self.kind == "reference" else "ddbench-run"

    @property
    def slug(self) -> str:
        """The cell's folder and log name."""
        if self.kind == "reference":
            return f"reference_{self.protocol}_{self.id}"
        return f"{self.method}_ipc{self.ipc}_{self.protocol}_{self.id}"

    @property
    def id(self) -> str:
        return stable_hash(["board-cell", self.board, list(self.args)], 12)

    @property
    def label(self) -> str:
        if self.kind == "reference":
            return f"reference {self.protocol} {','.join(self.eval_models)}"
        models = f" {','.join(self.eval_models)}" if self.kind == "cross" else ""
        return f"{self.method} ipc{self.ipc} {self.protocol}{models}"

    def command(self, records: str | Path, output_root: str | Path, extra: Iterable[str] = (),
                helper: bool = False) -> list[str]:
        """The full ddbench-run argument list: the cell's args plus where its records and artifact go (with
        helper=True: the command of a process that shares the cell's training runs, in a folder of its own)."""
        run_dir = Path(output_root) / self.board / self.slug
        if helper:
            run_dir = run_dir / "helper"
        # The id is quoted: an id such as 9e7662564664 would otherwise be read by Hydra as a float (inf).
        return [*self.args, f"board.name={self.board}", f"board.cell='{self.id}'", f"paths.records={records}",
                f"hydra.run.dir={run_dir}", "progress=false", "reuse_distilled=true", *extra,
                *(["helper=true"] if helper else [])]

    @property
    def shareable(self) -> bool:
        """Whether a helper process can take some of the cell's training runs: it evaluates on several
        architectures, or its protocol's scores add runs beside the evaluation."""
        return self.kind != "reference" and (len(self.eval_models) > 1 or bool(self.scores))

    @property
    def distillation(self) -> tuple[str, ...]:
        """The arguments that decide what the cell distills (all but the evaluation's): cells that share them share
        one distilled set through the cache."""
        return tuple(a for a in self.args if not a.lstrip("+~").startswith("eval"))


def available_boards() -> list[str]:
    folder = resources.files("ddbench.conf") / "board"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_board(name_or_path: str) -> Board:
    """A board by name (conf/board/NAME.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise DDBenchError(f"board file {path} does not exist.")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        resource = resources.files("ddbench.conf") / "board" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise DDBenchError(f"unknown board {name_or_path!r}; valid boards: {', '.join(available_boards())} "
                               "(or give the path of a board YAML file).")
        text, source = resource.read_text(encoding="utf-8"), f"conf/board/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DDBenchError(f"board {source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise DDBenchError(f"board {source} must be a mapping of keys (name, dataset, methods, ipcs, ...).")
    return Board.from_dict(data, source)


def protocol_setting(protocol: str, key: str, default: Any = None) -> Any:
    """A setting of a protocol YAML (following its `defaults:` chain), e.g. its `models` or `scores`."""
    folder = resources.files("ddbench.conf") / "eval"
    resource = folder / f"{protocol}.yaml"
    if not resource.is_file():
        names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise DDBenchError(f"unknown protocol {protocol!r} in the board; valid protocols: {', '.join(names)}.")
    data = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    if key in data:
        return data[key]
    for parent in data.get("defaults") or []:
        if isinstance(parent, str) and parent != "_self_":
            return protocol_setting(parent, key, default)
    return default


def protocol_models(protocol: str) -> list[str]:
    """The evaluation architectures a protocol YAML names."""
    return [str(m) for m in protocol_setting(protocol, "models", [])]


def cells(board: Board) -> tuple[list[Cell], list[tuple[str, int, str, str]]]:
    """(cells to run, not-applicable (method, ipc, protocol, why)) in board order: the reference cells, then the
    main cells by IPC and method order, then the cross-architecture cells."""
    todo, skipped = [], []
    for ipc in board.ipcs:
        for method, entry in board.methods.items():
            if entry.ipcs is not None and ipc not in entry.ipcs:
                continue
            for protocol in board.protocols_of(method):
                why = board.not_applicable.get(method, {}).get(ipc)
                if why:
                    skipped.append((method, ipc, protocol, why))
                    continue
                models = protocol_models(protocol)  # also checks that the protocol exists
                models = board.eval_models or models
                args = [f"method={method}", f"dataset={board.dataset}", f"ipc={ipc}", f"eval={protocol}"]
                if board.eval_models:
                    args.append("eval.models=[" + ",".join(board.eval_models) + "]")
                args += [*board.overrides, *entry.overrides]
                scores = tuple(str(x) for x in protocol_setting(protocol, "scores", []) or [])
                todo.append(Cell(board.name, method, ipc, protocol, tuple(args), tuple(models), scores))
    cross = [c for c in cross_cells(board) if (c.method, c.ipc) not in {(m, i) for m, i, _, _ in skipped}]
    return reference_cells(board, todo + cross) + todo + cross, skipped


def cross_cells(board: Board) -> list[Cell]:
    """One cell per (method, ipc, protocol, model) of `board.cross_architecture`: the method's arguments with
    eval.models=[model] (and eval.num_seeds), so the distilled set is the main cell's."""
    spec = board.cross_architecture
    if spec is None:
        return []
    out = []
    for ipc in spec.ipcs:
        for method, entry in board.methods.items():
            if (entry.ipcs is not None and ipc not in entry.ipcs) or board.not_applicable.get(method, {}).get(ipc):
                continue
            for protocol in spec.protocols:
                protocol_models(protocol)  # checks that the protocol exists
                for model in spec.models:
                    args = [f"method={method}", f"dataset={board.dataset}", f"ipc={ipc}", f"eval={protocol}",
                            f"eval.models=[{model}]"]
                    if spec.num_seeds is not None:  # declared by the board, so the records are not "shortened"
                        args += [f"eval.num_seeds={spec.num_seeds}", f"board.num_seeds={spec.num_seeds}"]
                    args += [*board.overrides, *entry.overrides]
                    out.append(Cell(board.name, method, ipc, protocol, tuple(args), (model,), kind="cross"))
    return out


SEED_ARGS = ("eval.num_seeds", "board.num_seeds")


def reference_cells(board: Board, runs: list[Cell]) -> list[Cell]:
    """Per protocol of `runs`: one ddbench-reference cell over the architectures its main cells evaluate on, with the
    protocol's seeds, and, where the board declares other seeds for its cross-architecture cells, one over the
    architectures only those use, with those seeds. So each whole-dataset row has the seeds of its column."""
    if not board.references:
        return []
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for cell in sorted(runs, key=lambda c: c.kind == "cross"):  # main cells first: theirs are the protocol's seeds
        seeds = tuple(a for a in cell.args if a.split("=", 1)[0] in SEED_ARGS) if cell.kind == "cross" else ()
        taken = {m for (protocol, _), names in groups.items() if protocol == cell.protocol for m in names}
        names = groups.setdefault((cell.protocol, seeds), [])
        names += [m for m in cell.eval_models if m not in taken and m not in names]
    return [Cell(board.name, "reference", 0, protocol,
                 (f"dataset={board.dataset}", f"eval={protocol}", "eval.models=[" + ",".join(names) + "]", *seeds,
                  *board.overrides), tuple(names), kind="reference")
            for (protocol, seeds), names in groups.items() if names]


def record_cell(record: dict[str, Any]) -> str | None:
    """The board cell id a record names, or None. Records written before cell ids were quoted on the command line
    may hold a float where Hydra read an id like 9e7662564664 as a number; the id is then read off the command."""
    cell = ((record.get("config") or {}).get("board") or {}).get("cell")
    if cell is None or isinstance(cell, str):
        return cell
    found = re.search(r"board\.cell='?([0-9a-f]{12})\b", str(record.get("command") or ""))
    return found.group(1) if found else str(cell)


def finished_cells(records: list[dict[str, Any]]) -> dict[str, set[str]]:
    """cell id → the evaluation architectures with a record for it (the id names the cell's exact arguments)."""
    done: dict[str, set[str]] = {}
    for record in records:
        cell = record_cell(record)
        if cell:
            done.setdefault(str(cell), set()).add(record["eval_model"])
    return done


def evaluation_seconds(record: dict[str, Any]) -> float:
    """A record's evaluation seconds with the training runs behind its fair scores (`score_seconds`, where the
    record measured them)."""
    return float(record["eval_seconds"]) + float(record.get("score_seconds") or 0.0)


def cell_parts(records: list[dict[str, Any]], cell_id: str) -> tuple[float, float]:
    """(distill, eval) seconds of a finished cell: the evaluation seconds (`evaluation_seconds`) of all its
    architectures; no distill seconds when it reused a set another cell distilled."""
    mine = [r for r in records if record_cell(r) == cell_id]
    distilled = [float(r.get("distill_seconds") or 0.0) for r in mine if not r.get("distill_reused")]
    return max(distilled, default=0.0), sum(evaluation_seconds(r) for r in mine)


def cell_seconds(records: list[dict[str, Any]], cell_id: str) -> float:
    """Distill + evaluation seconds of a finished cell (see `cell_parts`)."""
    return sum(cell_parts(records, cell_id))


# Relative cost of one training step per architecture against ConvNet at 16 px, batch 100, one CPU thread (ConvNet /
# AlexNet / ResNet-18-AP: 86 / 332 / 818 ms; VGG-11, whose 16-px layout keeps the 32-px map sizes: 690 ms against
# ConvNet's 100 ms in the same benchmarks/eval_throughput.py session), used only to estimate cells that have not run
# yet from the ConvNet cell of the same method.
STEP_COST = {"convnet": 1.0, "alexnet": 3.9, "vgg11": 7.0, "resnet18_ap": 9.5}


def estimate_seconds(cell: Cell, records: list[dict[str, Any]], todo: list[Cell]) -> float | None:
    """Expected seconds of a cell: for a cross-architecture cell, `scaled_by_architecture`; else (or when that
    has nothing to go on) the mean of finished cells of the same kind, protocol, IPC and architectures; for a main
    cell without those, `scaled_by_ipc`; for a reference cell, `scaled_reference`; None when nothing comparable has
    run."""
    done = finished_cells(records)
    finished = [c for c in todo if set(c.eval_models) <= done.get(c.id, set())]
    if cell.kind == "cross":
        scaled = scaled_by_architecture(cell, records, finished)
        if scaled is not None:
            return scaled
    alike = [cell_seconds(records, c.id) for c in finished
             if (c.kind, c.protocol, c.ipc, c.eval_models) == (cell.kind, cell.protocol, cell.ipc, cell.eval_models)]
    if alike:
        return sum(alike) / len(alike)
    if cell.kind == "main":
        return scaled_by_ipc(cell, records, finished)
    if cell.kind == "reference":
        return scaled_reference(cell, records, finished)
    return None


def scaled_by_architecture(cell: Cell, records: list[dict[str, Any]], finished: list[Cell]) -> float | None:
    """A one-architecture cell's evaluation seconds from its method's evaluations on other architectures (same
    protocol and IPC), per seed, times the cost ratio of the two architectures and the cell's seeds (the median
    over those other architectures). The ratio is measured: the median, over the methods evaluated on both, of
    their seconds per seed; STEP_COST's where no method has been. Methods differ far more than the architectures'
    ratio (INFER's decoded set is 2.8 times as large), so a method's own cells come first."""
    if len(cell.eval_models) != 1:
        return None
    model = cell.eval_models[0]
    ids = {c.id: c.method for c in finished
           if c.kind in ("main", "cross") and (c.protocol, c.ipc) == (cell.protocol, cell.ipc)}
    per_seed: dict[tuple[str, str], float] = {}  # (method, model) → eval seconds per seed
    seeds: dict[tuple[str, str], int] = {}
    for r in records:
        method = ids.get(record_cell(r))
        if method is not None and r.get("seeds") and r.get("eval_seconds") is not None:
            per_seed[(method, r["eval_model"])] = evaluation_seconds(r) / len(r["seeds"])
            seeds[(method, r["eval_model"])] = len(r["seeds"])
    estimates = []
    for (method, other), seconds in per_seed.items():
        if method != cell.method or other == model:
            continue
        ratios = [per_seed[(m, model)] / per_seed[(m, other)] for m, m_model in per_seed
                  if m_model == model and (m, other) in per_seed and per_seed[(m, other)] > 0]
        if ratios:
            estimates.append(seconds * statistics.median(ratios))
        elif model in STEP_COST and other in STEP_COST:
            estimates.append(seconds * STEP_COST[model] / STEP_COST[other])
    if not estimates:
        return None
    n_seeds = cell.num_seeds or max(n for (m, _), n in seeds.items() if m == cell.method)
    return statistics.median(estimates) * n_seeds


def scaled_reference(cell: Cell, records: list[dict[str, Any]], finished: list[Cell]) -> float | None:
    """A reference cell's seconds from the whole-dataset runs of finished reference cells (of its protocol when
    there are some): their seconds per seed and STEP_COST unit, times each of its architectures' STEP_COST and its
    seeds. None when an architecture has no STEP_COST or no reference cell has finished."""
    ids = {c.id: c.protocol for c in finished if c.kind == "reference"}
    runs = [r for r in records if r.get("reference") == "whole_dataset" and record_cell(r) in ids
            and r["eval_model"] in STEP_COST and r.get("seeds")]
    runs = [r for r in runs if ids[record_cell(r)] == cell.protocol] or runs
    if not runs or not all(m in STEP_COST for m in cell.eval_models):
        return None
    rate = sum(float(r["eval_seconds"]) / len(r["seeds"]) / STEP_COST[r["eval_model"]] for r in runs) / len(runs)
    per_model = cell.num_seeds or max(len(r["seeds"]) for r in runs)
    return rate * per_model * sum(STEP_COST[m] for m in cell.eval_models)


def scaled_by_ipc(cell: Cell, records: list[dict[str, Any]], finished: list[Cell]) -> float | None:
    """A main cell's seconds from its method's finished cells: the evaluation time of the same protocol and
    architectures at the nearest other IPC times the IPC ratio (a training step's cost grows with its batch, which
    is the whole set up to the batch size), plus the distillation time of the method at this IPC under any protocol
    (or the nearest IPC's, scaled alike). An upper bound where the cell reuses a set another cell distilled."""
    mine = [c for c in finished if c.kind == "main" and c.method == cell.method and c.ipc > 0]
    same = [c for c in mine if (c.protocol, c.eval_models) == (cell.protocol, cell.eval_models) and c.ipc != cell.ipc]
    if not same:
        return None
    nearest = min(same, key=lambda c: abs(math.log(c.ipc / cell.ipc)))
    distill, evaluate = (seconds * cell.ipc / nearest.ipc for seconds in cell_parts(records, nearest.id))
    here = [cell_parts(records, c.id)[0] for c in mine if c.ipc == cell.ipc]
    return evaluate + (max(here) if here else distill)


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | skipped | failed | stopped (its run saved a checkpoint and stopped; it resumes)
    seconds: float = 0.0
    error: str = ""


def run_command(name: str = "ddbench-run") -> list[str]:
    """How to start ddbench-run (or another ddbench command) from this interpreter: its console script when
    installed beside it."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    found = shutil.which(name)
    module = {"ddbench-run": "run", "ddbench-reference": "reference"}[name]
    return [found] if found else [sys.executable, "-m", f"ddbench.cli.{module}"]


def last_error(text: str) -> str:
    """The `error: ...` line of a failed run's output (else its last non-empty line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":", 1)[0]]
    return (errors or lines or ["(no output)"])[-1][:500]


STOP_GRACE_SECONDS = 120.0  # how long a cell stopped at its timeout may take to save its checkpoint
STOPPED_CODES = (STOPPED_EXIT_CODE, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)  # stopped by a signal


def stop_note(text: str, why: str = "") -> str:
    """What a stopped run's output says it left: `stopped at its checkpoint (epoch 228); run the board again ...`."""
    saved = re.findall(r"saved a checkpoint at (\w+ \d+)", text)
    where = f" at its checkpoint ({saved[-1]})" if saved else ""
    return f"stopped{why}{where}; run the board again to continue it from its checkpoints and cached stages"


def run_cell(cell: Cell, records: str | Path, output_root: str | Path, extra: Iterable[str] = (),
             timeout: float | None = None, log_dir: Path | None = None, threads: int | None = None,
             helper: bool = False) -> CellOutcome:
    """Run one cell as its own ddbench-run process (with `threads` CPU threads when given), or with helper=True a
    process that shares the training runs of the cell's running process; its output goes to
    `log_dir/<cell>.log` (`<cell>.helper.log`)."""
    argv = run_command(cell.script) + cell.command(records, output_root, extra, helper=helper)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    why = ""
    try:
        output, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the run saves a checkpoint at the end of its current epoch, then stops
        try:
            output, _ = proc.communicate(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        output, code = output or "", STOPPED_EXIT_CODE
        why = f" at its timeout ({format_seconds(timeout)})"
    seconds = time.perf_counter() - start
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        suffix = ".helper.log" if helper else ".log"
        (log_dir / f"{cell.slug}{suffix}").write_text(
            " ".join(argv) + "\n\n" + output, encoding="utf-8")
    if code in STOPPED_CODES:
        return CellOutcome(cell, "stopped", seconds, stop_note(output, why))
    if code != 0:
        return CellOutcome(cell, "failed", seconds, last_error(output))
    return CellOutcome(cell, "done", seconds)


def share_distillations(pending: list[Cell]) -> list[Cell]:
    """The cells in order, except that a cell distilling the same set as an earlier one (the kd cell of a method
    beside its dc cell) moves to the end: by then the set is in the cache, so it is evaluated, not distilled again,
    and no job waits for another's distillation."""
    seen: set[tuple[str, ...]] = set()
    first, later = [], []
    for cell in pending:
        (later if cell.distillation in seen else first).append(cell)
        seen.add(cell.distillation)
    return first + later


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_board(
    board: Board,
    records: str | Path,
    *,
    read: Callable[[], list[dict[str, Any]]],
    output_root: str | Path = "outputs/board",
    rerun: bool = False,
    max_minutes: float | None = None,
    only: Callable[[Cell], bool] | None = None,
    extra: Iterable[str] = (),
    log_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    runner: Callable[..., CellOutcome] = run_cell,
    jobs: int = 1,
) -> list[CellOutcome]:
    """Run the board's missing cells in order (all with rerun=True); print progress and an ETA.

    jobs: cells run at once, each with cpu_count // jobs threads (on a CPU, small cells finish sooner side by
    side than one after another with all threads each). A job with no cell left to start runs a helper for a
    running cell that has training runs to share (several architectures, or score baselines): the helper trains
    the runs the cell has not started and the cell takes their results from the cache.
    max_minutes: start no cell once the elapsed time plus the expected time of that cell would pass it (the
    expected time of a cell is the mean time of the cells already run by this call, or of this method's), and stop
    a cell still running when the budget ends (its cached experts, teachers and checkpoints let it resume).
    """
    todo, _ = cells(board)
    if only is not None:
        todo = [c for c in todo if only(c)]
    done = finished_cells(read())
    pending = share_distillations([c for c in todo if rerun or not set(c.eval_models) <= done.get(c.id, set())])
    outcomes = [CellOutcome(c, "skipped") for c in todo if c not in pending]
    if outcomes:
        echo(f"board {board.name}: {len(outcomes)} of {len(todo)} cells already have records (use --rerun to redo them)")
    echo(f"board {board.name}: {len(pending)} cell(s) to run" + (f", {jobs} at a time" if jobs > 1 else ""))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    began = time.perf_counter()
    took: dict[str, list[float]] = {}

    def expected(cell: Cell) -> float:
        if cell.method in took:
            return sum(took[cell.method]) / len(took[cell.method])
        all_times = [t for ts in took.values() for t in ts]
        return sum(all_times) / len(all_times) if all_times else 0.0

    queue = list(enumerate(pending, start=1))
    running: dict[Future, tuple[int, Cell]] = {}
    helpers: dict[Future, tuple[int, Cell]] = {}
    helped: set[str] = set()

    def timeout_now() -> float | None:
        timeout = board.cell_timeout
        if max_minutes is not None:  # a cell still running at the budget's end is stopped (it resumes)
            left_s = max(1.0, 60 * max_minutes - (time.perf_counter() - began))
            timeout = left_s if timeout is None else min(timeout, left_s)
        return timeout

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while queue or running:
            while queue and len(running) + len(helpers) < max(1, jobs):
                number, cell = queue[0]
                elapsed = time.perf_counter() - began
                if max_minutes is not None and (running or number > 1) and elapsed + expected(cell) > 60 * max_minutes:
                    echo(f"board {board.name}: no new cell after {format_seconds(elapsed)} (budget {max_minutes:g} "
                         f"min); {len(queue)} cell(s) left; run the same command again to go on")
                    queue.clear()
                    break
                queue.pop(0)
                echo(f"[{number}/{len(pending)}] {cell.label} ...")
                future = pool.submit(runner, cell, records, output_root, extra, timeout=timeout_now(), log_dir=log_dir,
                                     threads=threads)
                running[future] = (number, cell)
            # a job with no cell left to start helps a running cell with its training runs (one helper per cell)
            for number, cell in list(running.values()):
                if queue or len(running) + len(helpers) >= max(1, jobs):
                    break
                if cell.shareable and cell.id not in helped:
                    helped.add(cell.id)
                    echo(f"[{number}/{len(pending)}] {cell.label}: a helper process shares its training runs")
                    future = pool.submit(runner, cell, records, output_root, extra, timeout=timeout_now(),
                                         log_dir=log_dir, threads=threads, helper=True)
                    helpers[future] = (number, cell)
            if not running and not helpers:
                break
            finished, _ = wait([*running, *helpers], return_when=FIRST_COMPLETED)
            for future in finished:
                if future in helpers:
                    number, cell = helpers.pop(future)
                    helper_outcome = future.result()
                    if helper_outcome.status != "done":  # the cell itself does any run the helper did not
                        echo(f"[{number}/{len(pending)}] {cell.label}: its helper stopped: {helper_outcome.error}")
                    continue
                number, cell = running.pop(future)
                outcome = future.result()
                outcomes.append(outcome)
                if outcome.status == "done":
                    took.setdefault(cell.method, []).append(outcome.seconds)
                left = [c for _, c in queue] + [c for _, c in running.values()]
                eta = sum(expected(c) or outcome.seconds for c in left) / max(1, jobs)
                state = {"done": "done", "stopped": outcome.error}.get(outcome.status, f"FAILED: {outcome.error}")
                echo(f"[{number}/{len(pending)}] {cell.label}: {state} in {format_seconds(outcome.seconds)}; "
                     f"ETA {format_seconds(eta)} for {len(left)} more")
    return outcomes


# ----------------------------------------------------------------------------------------- rendering

LEADERBOARD_INTRO = """\
Every number below was produced by ddbench itself and is rendered from the records in `records/` (one JSON file
per run and evaluation architecture, with the exact command, the full config, versions, git commit, device and
timings). Rules: last-iteration artifact, last-epoch test accuracy, mean ± population std over the protocol's
fixed seeds; nothing is selected on the test set. Runs with `smoke=true` or a protocol budget cut on the command
line are kept off these tables (`ddbench-leaderboard --include-shortened` shows them, labelled). The HTML version
(`index.html`) shows the command and git commit behind every number on hover.

Reproduce a board with `ddbench-board NAME` (it skips cells that already have records, so a killed run resumes,
and a killed cell continues from its last checkpoints; `--rerun` redoes them); `ddbench-board NAME --list` prints
every cell's exact command and an ETA for the missing ones; with `--jobs N` a job with no cell left to start shares
the training runs of a running cell. Each table carries reference rows: `whole dataset` (the evaluation network
trained on the whole real train set with hard labels under the protocol's augmentation, 200 epochs with the lr x0.1
at half: `eval.full_data`) and, for protocols with a teacher, `teacher` (its test accuracy), written by the board's
`ddbench-reference` cells. A board's cross-architecture cells may use fewer seeds than the protocol (the n of every
cell says how many).
"""


def board_summary(records: list[dict[str, Any]]) -> str:
    """A Markdown table of the known boards: cells with records, compute time, devices, the command."""
    rows = ["| Board | Dataset | Cells with records | Compute (distill + eval + fair-score runs) | Mean per cell | Device "
            "| Command |",
            "|:---|:---|---:|---:|---:|:---|:---|"]
    done = finished_cells(records)
    for name in available_boards():
        board = load_board(name)
        todo, na = cells(board)
        finished = [c for c in todo if set(c.eval_models) <= done.get(c.id, set())]
        seconds = [cell_seconds(records, c.id) for c in finished]
        devices = sorted({r["device"] for r in records
                          if record_cell(r) in {c.id for c in finished}})
        total = sum(seconds)
        counts = []
        for kind, title in (("main", ""), ("cross", " cross-architecture"), ("reference", " reference")):
            of_kind = [c for c in todo if c.kind == kind]
            if of_kind:
                extra = f" (+{len(na)} n/a)" if kind == "main" else ""
                counts.append(f"{sum(c in finished for c in of_kind)} of {len(of_kind)}{title}{extra}")
        rows.append(
            f"| {name} | {board.dataset} | {'; '.join(counts)} | "
            f"{format_seconds(total) if finished else '—'} | "
            f"{format_seconds(total / len(finished)) if finished else '—'} | {', '.join(devices) or '—'} | "
            f"`ddbench-board {name}` |"
        )
    return "\n".join(rows)


def planned_cross(board: Board) -> dict[tuple[str, str], tuple[list[str], list[int]]]:
    """(dataset, protocol) → (models, ipcs) of the board's cross-architecture table: its main evaluation models and
    the extra architectures, at the cross-architecture IPCs (columns and rows shown before their records exist)."""
    spec = board.cross_architecture
    if spec is None:
        return {}
    out = {}
    for protocol in spec.protocols:
        main = board.eval_models or protocol_models(protocol)
        out[(board.dataset, protocol)] = ([*main, *(m for m in spec.models if m not in main)], list(spec.ipcs))
    return out


def render_leaderboard(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write `<out_dir>/README.md` (Markdown tables) and `<out_dir>/index.html` (+ PNG plots) from `records`."""
    from ddbench.records import leaderboard_frame, reference_frame, render_markdown
    from ddbench.records.html import html_report
    from ddbench.records.leaderboard import REFERENCE_ROWS
    from ddbench.utils import atomic_write_bytes

    out = Path(out_dir)
    not_applicable: dict[tuple[str, str, int], str] = {}
    notes: dict[tuple[str, str, str], str] = {}  # (dataset, protocol, method) → the board's note on its setting
    cross: dict[tuple[str, str], tuple[list[str], list[int]]] = {}  # (dataset, protocol) → planned models, ipcs
    ipcs: dict[tuple[str, str], list[int]] = {}  # (dataset, protocol) → the IPCs of its main cells
    for name in available_boards():
        board = load_board(name)
        todo, na = cells(board)
        for method, ipc, _, why in na:
            not_applicable[(board.dataset, method, ipc)] = why
        for cell in todo:
            if cell.kind == "main" and cell.ipc not in ipcs.setdefault((board.dataset, cell.protocol), []):
                ipcs[(board.dataset, cell.protocol)].append(cell.ipc)
        notes.update({(board.dataset, protocol, method): entry.note_for(protocol)
                      for method, entry in board.methods.items() for protocol in board.protocols_of(method)
                      if entry.note_for(protocol)})
        notes.update({(board.dataset, protocol, REFERENCE_ROWS): note_for(board.reference_note, protocol)
                      for protocol in board.all_protocols if note_for(board.reference_note, protocol)})
        cross.update(planned_cross(board))
    frame, references = leaderboard_frame(records), reference_frame(records)
    tables = render_markdown(frame, not_applicable, title="## Tables", references=references, notes=notes,
                             cross=cross, ipcs=ipcs)
    text = "# Leaderboard\n\n" + LEADERBOARD_INTRO + "\n## Boards\n\n" + board_summary(records) + "\n\n" + tables
    written = [atomic_write_bytes(out / "README.md", text.encode("utf-8"))]
    page, pngs = html_report(frame, png_stem="index", n_records=len(records), not_applicable=not_applicable,
                             references=references, notes=notes, cross=cross, ipcs=ipcs)
    for file_name, png in pngs.items():
        written.append(atomic_write_bytes(out / file_name, png))
    written.append(atomic_write_bytes(out / "index.html", page.encode("utf-8")))
    return written
