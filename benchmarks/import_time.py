"""Wall time of `python -c "import ddbench"` (target: under 0.5 s on a CPU; torch must not load until used).

    python benchmarks/import_time.py              # median and best of 10 fresh interpreters per line
    python benchmarks/import_time.py --repeats 20

Each line is a fresh interpreter of this Python; `python -c pass` is the floor it cannot go below, and the last
lines show what the first use costs (the API module with torch). Prints one `THROUGHPUT {...}` line per figure
(the format of benchmarks/report.py) for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 0.5
SNIPPETS = {
    "python -c pass": "pass",
    "import ddbench": "import ddbench, sys; assert 'torch' not in sys.modules, 'torch was imported'",
    "import ddbench; ddbench.list_protocols() (loads torch)": "import ddbench; ddbench.list_protocols()",
    "import ddbench; ddbench.evaluate (loads torch)": "import ddbench; ddbench.evaluate",
}


def wall_times(code: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"{'what':<56} {'median s':>9} {'best s':>8}")
    for label, code in SNIPPETS.items():
        times = wall_times(code, args.repeats)
        median, best = statistics.median(times), min(times)
        print(f"{label:<56} {median:>9.3f} {best:>8.3f}")
        if label == "import ddbench":
            verdict = "ok" if median < TARGET_SECONDS else "OVER"
            print(f"{'':<56} target < {TARGET_SECONDS} s: {verdict}")
        print("THROUGHPUT " + json.dumps({"stage": "import", "figure": label, "value": median, "unit": "s",
                                          "target": f"< {TARGET_SECONDS} s" if label == "import ddbench" else "",
                                          "device": "cpu"}), flush=True)


if __name__ == "__main__":
    main()
