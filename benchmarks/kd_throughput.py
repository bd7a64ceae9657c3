"""Throughput of the kd protocol: 5 seeds trained in lock-step on an IPC-10 set with an online teacher.

    python benchmarks/kd_throughput.py --device cuda                  # 5 seeds x 300 epochs, CIFAR-size if present
    python benchmarks/kd_throughput.py --device cpu --epochs 5        # a CPU sample (the default on CPUs)

Everything stays on the device: the set, the per-sample crop/flip, mixup and the teacher's forward pass, which
relabels each step's batch of all seeds at once. The teacher is trained briefly here (its quality does not
change the cost); prints seconds for the whole evaluation and per seed-epoch, projected to --project epochs.
On a GPU it uses CIFAR-10 when its files are present under the dataset root, else Fashion-MNIST, else the
bundled digits; on a CPU digits (or --dataset NAME).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.evaluation import EvalProtocol, Evaluator
from ddbench.utils import make_generator, resolve_device
from report import emit


def load_any(names: list[str], device: torch.device, root: str | None):
    for name in names:
        try:
            return load_dataset(name, root=root, device=device)
        except Exception:  # noqa: BLE001 - any missing-data error: try the next dataset
            continue
    raise SystemExit("no dataset found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", default=None,
                        help="default: the first of cifar10, fashion_mnist, digits found on GPU; digits on CPU")
    parser.add_argument("--root", default=None, help="dataset root (default $DDBENCH_DATA or ./data)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="default: 300 on GPU, 5 on CPU")
    parser.add_argument("--project", type=int, default=1000, help="project the time to this many epochs")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: 5 on GPU, 1 on CPU")
    parser.add_argument("--mixup", type=float, default=0.8)
    parser.add_argument("--augment", default="crop_flip", choices=["crop_flip", "dsa", "none"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    epochs = args.epochs or (300 if gpu else 5)
    names = [args.dataset] if args.dataset else (["cifar10", "fashion_mnist", "digits"] if gpu else ["digits"])
    splits = load_any(names, device, args.root)
    rows = splits.train.sample_per_class(args.ipc, make_generator(0, device)).flatten()
    images, labels = splits.train.images[rows], splits.train.labels[rows]
    proto = EvalProtocol.from_dict(dict(
        name="kd-bench", kind="kd", label_source="teacher", temperature=4.0, t2_scaling=True, optimizer="adamw",
        lr=1e-3, weight_decay=0.01, schedule="cosine", epochs=epochs, batch_size=256, augment=args.augment,
        mixup=args.mixup, num_seeds=args.seeds, models=[args.model],
        teacher=dict(models=["convnet"], epochs=args.teacher_epochs or (5 if gpu else 1), batch_size=256),
    )).for_data(splits.info)  # crop padding and flip follow the dataset, as in every evaluation

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    with tempfile.TemporaryDirectory() as tmp:
        ev = Evaluator(splits, proto, Cache(tmp))
        start = time.perf_counter()
        ev.teacher  # noqa: B018 - trains (or loads) the teacher
        sync()
        teacher_seconds = time.perf_counter() - start
        warm = EvalProtocol.from_dict(proto.to_dict() | {"epochs": 1, "epochs_no_aug": 1})
        ev.fit(warm, args.model, images, None, "teacher", proto.lr, make_generator(1, device))  # warm-up
        sync()
        start = time.perf_counter()  # fit trains every seed's network, then tests it
        acc = ev.fit(proto, args.model, images, None, "teacher", proto.lr, make_generator(2, device))
        sync()
        train_seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {device} ({name}), dataset: {splits.info.name} {tuple(splits.info.shape)}, model: {args.model}, "
          f"ipc: {args.ipc}, seeds: {args.seeds}, augment: {args.augment}, mixup: {args.mixup}")
    print(f"teacher training: {teacher_seconds:.1f} s")
    print(f"kd evaluation, {args.seeds} seeds x {epochs} epochs: train + test {train_seconds:.2f} s "
          f"({args.seeds * epochs / train_seconds:.1f} seed-epochs/s), mean accuracy {100 * sum(acc) / len(acc):.1f} %")
    print(f"projected {args.project} epochs + test, all {args.seeds} seeds: "
          f"{train_seconds / epochs * args.project:.1f} s")
    emit("evaluation (kd, online teacher)", "train throughput", args.seeds * epochs / train_seconds, "seed-epochs/s",
         device)
    emit("teacher training", f"convnet, {proto.teacher.epochs} epochs on {splits.info.name}", teacher_seconds, "s",
         device)


if __name__ == "__main__":
    main()
