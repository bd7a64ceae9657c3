"""Throughput of the shared evaluator: S seeds x E epochs of ConvNet on an IPC-10 set (dc protocol, DSA).

    python benchmarks/eval_throughput.py --device cuda            # the full 5 seeds x 1000 epochs
    python benchmarks/eval_throughput.py --device cpu --epochs 20 # a CPU sample, projected to 1000 epochs
    python benchmarks/eval_throughput.py --device cpu --ipc 50 --compile true   # with torch.compile (CPU)
    python benchmarks/eval_throughput.py --device cpu --dataset digits --model alexnet --seeds 3

Uses Fashion-MNIST's shape (1x28x28, 10 classes) with real images when the files are present, else digits.
"""

from __future__ import annotations

import argparse
import time

import torch

from ddbench.data import load_dataset
from ddbench.evaluation import EvalProtocol
from ddbench.training import NetworkBatch, test_accuracy, train
from ddbench.utils import make_generator, resolve_device
from report import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: 1000 on GPU, 20 on CPU")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--dataset", default=None, help="default: fashion_mnist where its files are, else digits")
    parser.add_argument("--vmap", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--compile", default="false", choices=["true", "false"],
                        help="torch.compile the training forwards (compiled during the warm-up, not timed)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    epochs = args.epochs or (1000 if device.type == "cuda" else 20)
    if args.dataset:
        splits = load_dataset(args.dataset, device=device)
    else:
        try:
            splits = load_dataset("fashion_mnist", device=device)
        except Exception:  # noqa: BLE001 - any missing-data error: fall back to the bundled set
            splits = load_dataset("digits", device=device)
    rows = splits.train.sample_per_class(args.ipc, make_generator(0, device)).flatten()
    images, labels = splits.train.images[rows], splits.train.labels[rows]
    vmap = {"auto": "auto", "true": True, "false": False}[args.vmap]

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def train_dc(nets: NetworkBatch, n_epochs: int) -> None:
        recipe = EvalProtocol.from_dict({"epochs": n_epochs, "batch_size": 256}).recipe(0.01)
        train(nets, images, labels, recipe, make_generator(1, device))

    def fresh() -> NetworkBatch:
        return NetworkBatch(args.model, splits.info, list(range(args.seeds)), device, vmap=vmap,
                            compile=args.compile == "true")

    train_dc(fresh(), 2)  # warm-up (kernels, allocator; compiling both batch shapes)
    nets = fresh()
    train_seconds = timed(lambda: train_dc(nets, epochs))
    test_seconds = timed(lambda: test_accuracy(nets, splits.test))
    per_1000 = train_seconds / epochs * 1000 + test_seconds
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dataset: {splits.info.name}, model: {args.model}, ipc: {args.ipc}, seeds: {args.seeds}, vmap: {args.vmap}, "
          f"compile: {args.compile}")
    print(f"train: {epochs} epochs x {args.seeds} seeds in {train_seconds:.2f} s -> "
          f"{args.seeds * epochs / train_seconds:.1f} seed-epochs/s; test ({len(splits.test)} images x {args.seeds} nets): "
          f"{test_seconds:.2f} s")
    print(f"projected 1000 epochs + test, all {args.seeds} seeds together: {per_1000:.2f} s "
          f"({per_1000 / args.seeds:.2f} s per seed)")
    emit("evaluation (dc)", f"{args.seeds} seeds x 1000 epochs, {args.model}, IPC {args.ipc}, {splits.info.name}",
         per_1000, "s", device, "<= 3 s on an H100")
    emit("evaluation (dc)", "train throughput", args.seeds * epochs / train_seconds, "seed-epochs/s", device)


if __name__ == "__main__":
    main()
