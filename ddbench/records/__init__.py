"""Result records (one JSON file per run and evaluation model) and the leaderboard built from them."""

from ddbench.records.html import html_report, render_html
from ddbench.records.leaderboard import leaderboard_frame, reference_frame, render_csv, render_markdown
from ddbench.records.schema import SCHEMA, SCHEMA_VERSION, make_record, validate_record
from ddbench.records.store import read_records, write_record

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "html_report",
    "leaderboard_frame",
    "reference_frame",
    "make_record",
    "read_records",
    "render_csv",
    "render_html",
    "render_markdown",
    "validate_record",
    "write_record",
]
