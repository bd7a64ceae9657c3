"""DQ's evaluation batch and gradient, and DataDAM's two settings, side by side with random real images.

Runs `ddbench-run` once per variant (each in its own records folder under --out/records, so a rerun skips finished
variants) and prints one Markdown table: mean ± std over the seeds, the evaluation batch the record names, and
the exact command. On a CPU the defaults fit in well under an hour on digits:

* DQ (method.gradient plain | reference) and random real images, IPC 10 and 50, under eval=dq with the reference's
  batch rule (16 at <= 10 % of the train split kept, else 128) and with the other batch forced;
* DataDAM with experiment=datadam_paper (p 4, InstanceNorm) and experiment=datadam_code (p 1, BatchNorm) at IPC 10
  under eval=dc, both cut to --datadam-iterations (the presets run 8000 / 20000).

    python benchmarks/dq_datadam_settings.py --out /tmp/settings            # digits, ConvNet, 3 seeds
    python benchmarks/dq_datadam_settings.py --dataset fashion_mnist --models resnet18_cifar --out /tmp/fm
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, ddbench-run arguments) per variant."""
    common = [f"dataset={args.dataset}", f"eval.models=[{args.models}]", f"eval.num_seeds={args.seeds}"]
    out = []
    for ipc in (10, 50):
        for batch in ("rule", "other"):
            # the rule gives 16 at <= 10 % kept; "other" forces the batch the rule did not pick
            fraction = ["eval.small_set_fraction=null", f"eval.batch_size={'128' if ipc == 10 else '16'}"]
            extra = [] if batch == "rule" else fraction
            for method, options in (("random", []), ("dq", ["method.gradient=plain"]),
                                    ("dq", ["method.gradient=reference"])):
                name = method if not options else f"{method}-{options[0].split('=')[1]}"
                out.append((f"{name}-ipc{ipc}-batch_{batch}",
                            [f"method={method}", f"ipc={ipc}", "eval=dq", *common, *options, *extra]))
    for preset in ("datadam_paper", "datadam_code"):
        out.append((f"{preset}-ipc10", [f"experiment={preset}", f"ipc=10", "eval=dc", *common,
                                        f"method.iterations={args.datadam_iterations}", "method.batch_real=64"]))
    out.append(("random-ipc10-dc", ["method=random", "ipc=10", "eval=dc", *common]))
    # the costliest last: batch 16 at IPC 50 takes 8x the steps of the rule's batch 128
    return sorted(out, key=lambda item: item[0].endswith("ipc50-batch_other"))


def read(folder: Path) -> dict | None:
    files = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    return json.loads(files[-1].read_text()) if files else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a folder for the records (one per variant)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--models", default="convnet", help="eval.models, comma separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datadam-iterations", type=int, default=1000)
    parser.add_argument("--only", default="", help="run only variants whose label contains this")
    parser.add_argument("--set", action="append", default=[], help="an extra override for every run (device=...)")
    args = parser.parse_args()
    rows = []
    for label, run_args in variants(args):
        if args.only not in label:
            continue
        folder = args.out / "records" / label
        command = ["ddbench-run", *run_args, *args.set, f"paths.records={folder}", f"paths.output={args.out / 'runs' / label}"]
        if read(folder) is None:
            print(f"running {label}: {shlex.join(command)}", file=sys.stderr, flush=True)
            done = subprocess.run(command, stdout=subprocess.DEVNULL)
            if done.returncode != 0:
                print(f"{label}: exit {done.returncode}", file=sys.stderr)
                continue
        record = read(folder)
        rows.append(f"| {label} | {100 * record['mean']:.2f} ± {100 * record['std']:.2f} | {len(record['seeds'])} | "
                    f"{record.get('eval_batch_size')} | `{shlex.join(['ddbench-run', *run_args])}` |")
    print("| variant | accuracy % | seeds | eval batch | command |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
