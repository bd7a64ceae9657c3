"""`ddbench-leaderboard`: aggregate the result records into a leaderboard.

    ddbench-leaderboard [--records DIR] [--format md|csv] [--out FILE] [--lenient]

Markdown goes to stdout unless --out is given (written atomically).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import pandas as pd

from ddbench.records import leaderboard_frame, read_records, render_csv, render_markdown
from ddbench.utils import DDBenchError, atomic_write_bytes

DEFAULT_RECORDS = "leaderboard/records"

# Output format name → renderer of the leaderboard frame. Add new formats here.
FORMATS: dict[str, Callable[[pd.DataFrame], str]] = {
    "md": render_markdown,
    "csv": render_csv,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddbench-leaderboard",
        description="Aggregate ddbench result records into a leaderboard.",
    )
    parser.add_argument(
        "--records",
        default=DEFAULT_RECORDS,
        metavar="DIR",
        help=f"folder of record JSON files, as set by paths.records=DIR (default: {DEFAULT_RECORDS})",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="md", help="output format (default: md)")
    parser.add_argument("--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    parser.add_argument(
        "--lenient", action="store_true", help="skip unreadable or invalid records with a warning instead of failing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records = read_records(args.records, strict=not args.lenient)
        text = FORMATS[args.format](leaderboard_frame(records))
        if args.out:
            path = atomic_write_bytes(args.out, text.encode("utf-8"))
            print(f"wrote leaderboard of {len(records)} records to {path}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    except DDBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
