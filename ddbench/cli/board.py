"""`ddbench-board`: run every cell of a named board, skipping cells that already have records, then render.

    ddbench-board NAME [--records DIR] [--out-dir DIR] [--rerun] [--max-minutes M] [--only KEY=V[,V]] [--jobs N] [--list]
                       [--set OVERRIDE ...]

NAME is a board of conf/board/ (e.g. `digits`, `fashion_mnist`) or the path of a board YAML file. Each cell runs as
one `ddbench-run` process; its records carry the cell's id, so running the same command again finishes only the
missing cells. At the end the Markdown (`<out-dir>/README.md`) and HTML (`<out-dir>/index.html` + PNG plots)
leaderboards are rendered from every record in the records folder, and failed cells are listed with their error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from ddbench.board import Cell, available_boards, cells, estimate_seconds, format_seconds, load_board, run_board
from ddbench.utils import DDBenchError, one_line

DEFAULT_RECORDS = "leaderboard/records"
FILTER_KEYS = ("method", "ipc", "protocol", "kind", "model")  # kind: main | cross | reference; model: an eval model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddbench-board", description="Run a board of (method, IPC, protocol) cells.")
    parser.add_argument("board", help="a board name (" + ", ".join(available_boards()) + ") or a board YAML file")
    parser.add_argument("--records", default=DEFAULT_RECORDS, metavar="DIR",
                        help=f"records folder read for finished cells and written by new ones (default {DEFAULT_RECORDS})")
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help="where README.md and index.html are rendered (default: the records folder's parent)")
    parser.add_argument("--outputs", default="outputs/board", metavar="DIR", help="run folders (artifacts, logs)")
    parser.add_argument("--rerun", action="store_true", help="run every cell again, even those with records")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="start no cell that would end past M minutes (run again to go on)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V[,V]",
                        help="run only matching cells, e.g. --only method=dm,random --only ipc=10 --only "
                             "model=resnet18_ap (a cell matches a model it evaluates on; keys: "
                             + ", ".join(FILTER_KEYS) + ")")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE", dest="extra",
                        help="an override for every cell that does not change what it computes, e.g. device=cuda "
                             "or paths.cache=DIR")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="cells run at once, each with cores/N threads (default 1); a job with no cell left to "
                             "start helps a running cell with its training runs (helper=true)")
    parser.add_argument("--list", action="store_true", help="print the cells and their state, run nothing")
    parser.add_argument("--no-render", action="store_true", help="do not render the leaderboard at the end")
    parser.add_argument("--rehearse", "--dry-run", action="store_true", dest="rehearse",
                        help="run every (selected) cell's own command with smoke=true in a scratch folder (records, "
                             "cache, outputs, page), so a broken cell is found before the real run; prints the wall "
                             "time. --records then defaults to the scratch folder too")
    return parser


def rehearsal(args: argparse.Namespace, board_name: str) -> Path:
    """Point the run at a scratch folder and shrink every cell with smoke=true (the cells keep their ids)."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=f"ddbench-rehearsal-{board_name}-"))
    if args.records == DEFAULT_RECORDS:
        args.records = str(scratch / "records")
    args.outputs = str(scratch / "outputs")
    args.out_dir = args.out_dir or str(scratch / "site")
    args.extra = ["smoke=true", "smoke_wins=true", f"paths.cache={scratch / 'cache'}", *args.extra]
    print(f"rehearsal of board {board_name} in {scratch} (smoke=true, smoke_wins=true: the smoke budgets win over "
          "the cells' own; nothing is written elsewhere)")
    return scratch


def cell_filter(specs: list[str]):
    """A predicate on cells (anything with method, ipc and protocol attributes) from --only KEY=V[,V] specs."""
    wanted: dict[str, set[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or key not in FILTER_KEYS or not values:
            raise DDBenchError(f"--only {spec!r}: use KEY=V[,V] with KEY one of {', '.join(FILTER_KEYS)}, "
                               "e.g. --only method=dm,random.")
        wanted.setdefault(key, set()).update(v.strip() for v in values.split(","))

    def value(cell: Cell, key: str) -> set[str]:
        if key == "model":
            return {str(m) for m in getattr(cell, "eval_models", ())}
        return {str(getattr(cell, key))}

    def keep(cell: Cell) -> bool:
        return all(value(cell, key) & values for key, values in wanted.items())

    return keep


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ddbench.records import read_records
        from ddbench.board import render_leaderboard

        board = load_board(args.board)
        started = time.perf_counter()
        if args.rehearse:
            rehearsal(args, board.name)
        records = Path(args.records)
        out_dir = Path(args.out_dir) if args.out_dir else records.parent
        only = cell_filter(args.only)
        for override in args.extra:
            if "=" not in override:
                raise DDBenchError(f"--set {override!r}: write an override as KEY=VALUE, e.g. --set device=cuda.")
        if args.jobs < 1:
            raise DDBenchError(f"--jobs must be >= 1, got {args.jobs}.")
        records.mkdir(parents=True, exist_ok=True)

        def read() -> list[dict]:
            return read_records(records, strict=False)

        if args.list:
            from ddbench.board import finished_cells

            found = read()
            done = finished_cells(found)
            todo, na = cells(board)
            left = 0.0
            width = max([len(c.label) for c in todo if only(c)] + [34])
            for cell in todo:
                if only(cell):
                    finished = set(cell.eval_models) <= done.get(cell.id, set())
                    eta = None if finished else estimate_seconds(cell, found, todo)
                    left += eta or 0.0
                    when = "" if finished else f"ETA {format_seconds(eta)}" if eta is not None else "ETA ?"
                    print(f"{'done' if finished else 'missing':8s} {cell.label:{width}s} {when:12s} {cell.id}  "
                          f"{cell.script} {' '.join(cell.args)}")
            for method, ipc, protocol, why in na:
                if only(SimpleNamespace(method=method, ipc=ipc, protocol=protocol, kind="main")):
                    print(f"{'n/a':8s} {method} ipc{ipc} {protocol:10s} {why}")
            print(f"estimated time of the missing cells with an ETA: {format_seconds(left)} (one job; ETA ? = nothing "
                  "comparable has run yet)")
            return 0

        outcomes = run_board(board, records, read=read, output_root=args.outputs, rerun=args.rerun,
                             max_minutes=args.max_minutes, only=only, extra=args.extra,
                             log_dir=Path(args.outputs) / board.name / "logs", jobs=args.jobs)
        ran = [o for o in outcomes if o.status != "skipped"]
        failed = [o for o in outcomes if o.status == "failed"]
        stopped = [o for o in outcomes if o.status == "stopped"]
        print(f"board {board.name}: {sum(o.status == 'done' for o in ran)} cell(s) run in "
              f"{format_seconds(sum(o.seconds for o in ran))}, {len(failed)} failed, "
              + (f"{len(stopped)} stopped (they resume), " if stopped else "")
              + f"{sum(o.status == 'skipped' for o in outcomes)} already had records")
        if not args.no_render:
            for path in render_leaderboard(read(), out_dir):
                print(f"rendered {path}")
        if args.rehearse:
            passed = sum(o.status == "done" for o in ran)
            print(f"rehearsal of board {board.name}: {passed} of {len(ran)} cell(s) passed in "
                  f"{format_seconds(time.perf_counter() - started)} of wall time")
        logs = Path(args.outputs) / board.name / "logs"
        if stopped:
            print(f"stopped cells ({len(stopped)}; no records yet; logs under {logs}):", file=sys.stderr)
            for o in stopped:
                print(f"  {o.cell.label}: {o.error}", file=sys.stderr)
        if failed:
            print(f"failed cells ({len(failed)}; no records were written for them; logs under {logs}):",
                  file=sys.stderr)
            for o in failed:
                print(f"  {o.cell.label}: {o.error}", file=sys.stderr)
        if failed or stopped:
            return 1
    except DDBenchError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
