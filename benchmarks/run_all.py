"""Every throughput figure of the suite in one table: evaluator, teacher, experts, MTT step, DM step, recover,
DataDAM, DQ, with the device name.

    python benchmarks/run_all.py --device cuda                 # the GPU figures (targets in the last column)
    python benchmarks/run_all.py --device cpu                  # small CPU samples of every stage
    python benchmarks/run_all.py --device cuda --markdown benchmarks/results.md

Each stage is one benchmark script of this folder, run as its own process (so one stage's memory does not
affect the next); every script prints `THROUGHPUT {...}` lines (benchmarks/report.py) that are collected here.
A script that fails is listed with its last error line, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "THROUGHPUT "

# (script, extra arguments on CPU, extra arguments on GPU); scripts that are missing are skipped with a note.
STAGES: list[tuple[str, list[str], list[str]]] = [
    ("eval_throughput.py", ["--epochs", "3"], []),
    ("kd_throughput.py", ["--epochs", "2"], []),
    ("trajectory_throughput.py", [], []),
    ("dm_step.py", [], []),
    ("recover_throughput.py", [], ["--model", "resnet18_cifar", "--size", "32", "--channels", "3", "--classes", "100",
                                   "--groups", "50", "--steps", "20"]),
    ("datadam_dq_throughput.py", [], []),
]


def run_stage(script: str, args: list[str], timeout: float) -> tuple[list[dict], str, float]:
    """(figures, error or '', seconds) of one benchmark script."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:g} s", time.perf_counter() - start
    figures = [json.loads(line[len(PREFIX):]) for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    error = ""
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        error = (lines or ["failed"])[-1][:300]
    elif not figures:
        error = "printed no THROUGHPUT line"
    return figures, error, time.perf_counter() - start


def table(rows: list[dict]) -> str:
    header = "| Stage | Figure | Value | Unit | Target | Device |\n|:---|:---|---:|:---|:---|:---|"
    lines = [f"| {r['stage']} | {r['figure']} | {r['value']:.4g} | {r['unit']} | {r['target']} | {r['device']} |"
             for r in rows]
    return "\n".join([header, *lines])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per stage")
    parser.add_argument("--only", nargs="*", default=None, help="script names to run (default: all)")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, failures = [], []
    for script, cpu_args, gpu_args in STAGES:
        if args.only and script not in args.only:
            continue
        if not (HERE / script).is_file():
            failures.append((script, "not present"))
            continue
        extra = ["--device", device, *(gpu_args if device.startswith("cuda") else cpu_args)]
        print(f"running {script} {' '.join(extra)} ...", flush=True)
        figures, error, seconds = run_stage(script, extra, args.timeout)
        rows += figures
        if error:
            failures.append((script, error))
        print(f"  {len(figures)} figure(s) in {seconds:.0f} s{' — ' + error if error else ''}", flush=True)
    text = f"Throughput, {date.today().isoformat()}, `python benchmarks/run_all.py --device {device}`\n\n{table(rows)}"
    if failures:
        text += "\n\nNot measured: " + "; ".join(f"{s}: {e}" for s, e in failures)
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return 1 if failures and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
