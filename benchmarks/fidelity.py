"""Fidelity evidence: a method beside the baselines it must beat, over several run seeds, as mean ± std.

    python benchmarks/fidelity.py teacher  --dataset fashion_mnist --out runs/fidelity   # CDA, INFER
    python benchmarks/fidelity.py matching --dataset digits --out runs/fidelity          # DataDAM vs DM, DQ vs random
    python benchmarks/fidelity.py teacher --dataset digits --out runs/fidelity --list    # the commands only

Sets (each variant runs once per seed; one student per run, eval.seed_base = the run seed):
  teacher   CDA and INFER at IPC 10, each beside (a) Gaussian noise recovered for 0 iterations and (b) random
            real images (CDA's init=real, 0 iterations), both relabelled by the same teacher(s) under the same
            protocol (eval=cda / eval=infer).
  matching  DM and DataDAM (BatchNorm random nets as the paper, InstanceNorm like the evaluator's ConvNet, and the
            reference code's attention power p = 1) with the same iteration budget and real batch; DQ at IPC 10
            (PCA-decoded and blur-filled patches, and without the pixel stage) beside random real images at IPC 8, the same stored
            bytes (DQ drops 20 % of the patches: ipc_equivalent 8), and at IPC 10; the dc protocol cut to 300 epochs,
            on ConvNet and on ConvNet-BN (the evaluation network of DataDAM's reference code).
Budgets are CPU-sized and cut on the command line, so every record is marked `shortened` (off the leaderboard).
Fashion-MNIST runs use 1000 training images per class (10k of 60k; the test split is whole): teachers, embedding
networks and real batches all come from that subset.

A variant whose records exist for a seed is skipped, so a killed run resumes; the table reads the records.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddbench.board import run_command  # noqa: E402
from ddbench.records import read_records  # noqa: E402

# Per dataset: the overrides every run of a set shares.
SHARED = {
    ("teacher", "digits"): {
        "cda": ["experiment=cda_digits_ipc10", "eval.epochs=100", "eval.epochs_no_aug=100"],
        "infer": ["experiment=infer_digits_ipc10", "eval.epochs=100", "eval.epochs_no_aug=100", "method.iterations=100"],
    },
    ("teacher", "fashion_mnist"): {
        "cda": ["experiment=cda_fashion_mnist_ipc10", "++dataset.max_train_per_class=1000", "method.teacher.epochs=10"],
        "infer": ["experiment=infer_fashion_mnist_ipc10", "++dataset.max_train_per_class=1000",
                  "method.teacher.epochs=5"],
    },
}
# ConvNet (InstanceNorm) is the shared evaluator; ConvNet-BN is the network DataDAM's reference code evaluates with.
MATCHING = ["eval=dc", "eval.models=[convnet,convnet_bn]", "eval.epochs=300", "ipc=10"]
MATCHING_DATA = {"digits": ["dataset=digits"],
                 "fashion_mnist": ["dataset=fashion_mnist", "++dataset.max_train_per_class=1000"]}
MATCHED_BUDGET = ["method.iterations=300", "method.batch_real=64"]


def variants(set_name: str, dataset: str) -> dict[str, list[str]]:
    """{tag: ddbench-run overrides} of one evidence set on one dataset."""
    if set_name == "matching":
        base = MATCHING_DATA[dataset] + MATCHING
        return {
            "dm": base + ["method=dm"] + MATCHED_BUDGET,
            "datadam": base + ["method=datadam"] + MATCHED_BUDGET,
            "datadam_instancenorm": base + ["method=datadam", "method.norm=instancenorm"] + MATCHED_BUDGET,
            "datadam_power1": base + ["method=datadam", "method.power=1"] + MATCHED_BUDGET,  # the reference code's p
            "dq": base + ["method=dq", "method.embedding.epochs=10"],  # dropped patches decoded by PCA
            "dq_blur_fill": base + ["method=dq", "method.embedding.epochs=10", "method.fill=blur"],
            "dq_no_pixel": base + ["method=dq", "method.embedding.epochs=10", "method.pixel=false"],
            "random_same_bytes": base + ["method=random", "ipc=8"],
            "random": base + ["method=random"],
        }
    out = {}
    for method, base in SHARED[(set_name, dataset)].items():
        out[method] = base
        out[f"{method}_noise"] = base + ["method=cda", "method.iterations=0"]
        out[f"{method}_random_relabelled"] = base + ["method=cda", "method.init=real", "method.iterations=0"]
    return out


def accuracies(folder: Path) -> dict[str, list[float]]:
    """Every evaluation seed's accuracy (%) in a folder of records, by evaluation model."""
    found: dict[str, list[float]] = {}
    if folder.is_dir():
        for record in read_records(folder, strict=False):
            found.setdefault(record["eval_model"], []).extend(100 * a for a in record["accuracies"])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", choices=["teacher", "matching"])
    parser.add_argument("--dataset", choices=["digits", "fashion_mnist"], default="digits")
    parser.add_argument("--out", default="runs/fidelity", help="records and run folders go under OUT/SET/DATASET")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="variant tags to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    root = Path(args.out) / args.set / args.dataset
    table = variants(args.set, args.dataset)
    for tag, overrides in table.items():
        if args.only and tag not in args.only:
            continue
        for seed in args.seeds:
            records = root / "records" / tag / f"seed{seed}"
            command = run_command() + overrides + [
                f"seed={seed}", f"eval.seed_base={seed}", "eval.num_seeds=1", "progress=false",
                f"paths.records={records}", f"hydra.run.dir={root / 'runs' / tag / f'seed{seed}'}",
            ]
            if args.list:
                print(" ".join(command))
                continue
            if accuracies(records):
                continue
            print(f"{tag} seed {seed} ...", flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"  failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}", flush=True)
    if args.list:
        return 0
    print(f"\n{args.set} · {args.dataset} (mean ± population std over run seeds, %)")
    for tag in table:
        by_model: dict[str, list[float]] = {}
        for seed in args.seeds:
            for model, accs in accuracies(root / "records" / tag / f"seed{seed}").items():
                by_model.setdefault(model, []).extend(accs)
        cells = [f"{model} {statistics.mean(a):6.2f} ± {statistics.pstdev(a):5.2f} (n={len(a)})"
                 for model, a in sorted(by_model.items())]
        if cells:
            print(f"  {tag:26s} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
