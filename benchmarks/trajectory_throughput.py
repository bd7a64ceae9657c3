"""Throughput of trajectory matching: expert training and one MTT outer iteration.

    python benchmarks/trajectory_throughput.py --device cuda                 # 10 experts x 2 epochs, 20 iterations
    python benchmarks/trajectory_throughput.py --device cpu                  # small CPU sample (width 32, N=5)
    python benchmarks/trajectory_throughput.py --device cuda --optimizer gsam --unroll recompute

Expert training: seconds per expert-epoch, amortised over `--experts` experts trained together (ConvNet,
batch 256, DSA, SGD or GSAM) on Fashion-MNIST when its files are present, else digits. MTT: seconds per
outer iteration at IPC 10, N = 30 inner steps, the whole synthetic set per step (batch_syn = full), DSA.
Targets on one H100: <= 0.3 s per expert-epoch (CIFAR-size data), <= 50 ms per MTT iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time

import torch

from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.methods.experts import ExpertSpec, train_expert_group
from ddbench.methods.mtt import MTT
from ddbench.utils import resolve_device
from report import emit


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", default=None, help="default: fashion_mnist if present, else digits")
    parser.add_argument("--experts", type=int, default=None, help="experts trained together (default: 10 GPU, 2 CPU)")
    parser.add_argument("--epochs", type=int, default=None, help="expert epochs timed (default: 2 GPU, 1 CPU)")
    parser.add_argument("--max-train", type=int, default=None, help="train images per class (default: all GPU, 100 CPU)")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "gsam"])
    parser.add_argument("--iterations", type=int, default=None, help="MTT iterations timed (default: 20 GPU, 3 CPU)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--syn-steps", type=int, default=None, help="N (default: 30 GPU, 5 CPU)")
    parser.add_argument("--width", type=int, default=None, help="ConvNet width (default: 128 GPU, 32 CPU)")
    parser.add_argument("--unroll", default="plain", choices=["plain", "recompute"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    n_experts = args.experts or (10 if gpu else 2)
    epochs = args.epochs or (2 if gpu else 1)
    iterations = args.iterations or (20 if gpu else 2)
    syn_steps = args.syn_steps or (30 if gpu else 5)
    width = args.width or (128 if gpu else 32)
    max_train = args.max_train or (None if gpu else 100)
    names = [args.dataset] if args.dataset else ["fashion_mnist", "digits"]
    for name in names:
        try:
            splits = load_dataset(name, device=device, max_train_per_class=max_train)
            break
        except Exception:  # noqa: BLE001 - a missing dataset: try the next one
            if name == names[-1]:
                raise
    model_cfg = {"name": "convnet", "width": width}
    print(f"device: {device} ({torch.cuda.get_device_name(device) if gpu else 'cpu'}, {torch.get_num_threads()} threads), "
          f"dataset: {splits.info.name} ({len(splits.train)} train images, {tuple(splits.info.shape)}), "
          f"ConvNet width {width}", flush=True)

    # ---------------------------------------------------------------- experts
    spec = ExpertSpec(num_experts=n_experts, epochs=epochs, optimizer=args.optimizer, parallel=n_experts)
    warm = dataclasses.replace(spec, epochs=1)
    subset = dataclasses.replace(splits, train=splits.train.truncate_per_class(2 * spec.batch_size // 10 + 1))
    train_expert_group(subset, model_cfg, warm, {}, list(range(n_experts)), device)  # warm-up: kernels, allocator
    sync(device)
    start = time.perf_counter()
    train_expert_group(splits, model_cfg, spec, {}, list(range(n_experts)), device)
    sync(device)
    seconds = time.perf_counter() - start
    steps = math.ceil(len(splits.train) / spec.batch_size)
    per = seconds / (n_experts * epochs)
    print(f"experts ({args.optimizer}): {n_experts} experts x {epochs} epochs ({steps} steps of 256) in {seconds:.2f} s "
          f"-> {per:.3f} s per expert-epoch amortised; x {50000 / len(splits.train):.1f} for a 50k-image epoch "
          f"= {per * 50000 / len(splits.train):.3f} s", flush=True)
    emit(f"experts ({args.optimizer})", f"per expert-epoch, 50k images, width {width}",
         per * 50000 / len(splits.train), "s", device, "<= 0.3 s on an H100")

    # ---------------------------------------------------------------- MTT iterations
    options = {
        "experts": {"num_experts": 2, "epochs": 3, "parallel": 2, "batch_size": 256},
        "iterations": iterations, "syn_steps": syn_steps, "expert_epochs": 2, "max_start_epoch": 1,
        "batch_syn": None, "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "unroll": args.unroll,
        "checkpoint_every": 0, "guard_every": 10**9, "log_every": 0,
    }

    def timed(n_iterations: int) -> float:
        method = MTT(splits, args.ipc, 0, device, {**options, "iterations": n_iterations}, model_cfg,
                     {"enabled": True}, cache)
        sync(device)
        start = time.perf_counter()
        method.distill()
        sync(device)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(tmp)
        timed(2)  # trains the two experts, warms up the kernels
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        # the difference of two runs removes the set-up (loading experts, initialisation)
        seconds = timed(iterations + 1) - timed(1)
    memory = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if gpu else ""
    print(f"mtt ({args.unroll}): ipc {args.ipc}, N={syn_steps}, batch_syn full: {iterations} iterations in {seconds:.2f} s "
          f"-> {1000 * seconds / iterations:.1f} ms per iteration{memory}")
    emit(f"mtt step ({args.unroll})", f"IPC {args.ipc}, N={syn_steps}, width {width}", 1000 * seconds / iterations,
         "ms", device, "<= 50 ms at N=30 on an H100")


if __name__ == "__main__":
    main()
