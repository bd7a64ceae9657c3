"""`ddbench-leaderboard`: aggregate the result records into a leaderboard.

    ddbench-leaderboard [--records DIR] [--format md|csv|html] [--out FILE] [--lenient] [--include-shortened]

Markdown goes to stdout unless --out is given (written atomically). `--format html` writes one self-contained
page (inline CSS/JS, plots embedded); with --out the plots are also written as PNG files next to FILE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from ddbench.records import leaderboard_frame, read_records, reference_frame, render_csv, render_markdown
from ddbench.records.html import html_report, render_html
from ddbench.utils import DDBenchError, atomic_write_bytes, one_line

DEFAULT_RECORDS = "leaderboard/records"

# Output format name → renderer of the leaderboard frame (and the reference rows). Add new formats here.
FORMATS: dict[str, Callable[..., str]] = {
    "md": render_markdown,
    "csv": render_csv,
    "html": render_html,
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
    parser.add_argument(
        "--include-shortened", action="store_true",
        help="also show runs with smoke=true or a protocol budget cut on the command line, labelled as such",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            records = read_records(args.records, strict=not args.lenient)
        except DDBenchError as err:
            if args.lenient or not Path(args.records).is_dir():
                raise
            raise DDBenchError(f"{err} Fix or remove the file, or pass --lenient to skip invalid records "
                               "with a warning.") from err
        frame = leaderboard_frame(records, include_shortened=args.include_shortened)
        references = reference_frame(records, include_shortened=args.include_shortened)
        if args.out and args.format == "html":  # the page, and its plots as PNG files beside it
            out = Path(args.out)
            text, pngs = html_report(frame, png_stem=out.stem, n_records=len(records), references=references)
            for name, png in pngs.items():
                atomic_write_bytes(out.parent / name, png)
        else:
            text = FORMATS[args.format](frame, references=references)
        if args.out:
            path = atomic_write_bytes(args.out, text.encode("utf-8"))
            print(f"wrote leaderboard of {len(records)} records to {path}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    except DDBenchError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
