"""How a method's step time and peak memory grow with classes, IPC and resolution, on small random shapes.

    python benchmarks/scaling.py --method dm
    python benchmarks/scaling.py --method mtt --unroll recompute
    python benchmarks/scaling.py --memory-model     # activations of MTT's published settings on one GPU

One factor at a time from a small base (10 classes, IPC 1, 3x16x16, ConvNet width 32, DSA); random tensors, so
only speed and memory mean anything. DM: batch_real 64. MTT: 2 cached experts of 2 epochs on 64 images per
class, N = 5 unrolled steps on the whole synthetic set. Peak memory: growth of the peak RSS over the timed steps
on a CPU (Linux), CUDA peak allocated on a GPU. Median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ddbench.cache import Cache
from ddbench.data import DatasetInfo, Splits
from ddbench.data.tensors import ClassTensors
from ddbench.methods import create_method
from ddbench.utils import reset_rss_peak, resolve_device, rss_peak_bytes

BASE = {"classes": 10, "ipc": 1, "size": 16}
GRID = [("classes", (10, 20, 40)), ("ipc", (1, 10, 50)), ("size", (16, 32, 64))]
MODEL = {"name": "convnet", "width": 32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def splits(classes: int, size: int, per_class: int, device: torch.device) -> Splits:
    gen = torch.Generator(device=device).manual_seed(0)
    info = DatasetInfo("random", 3, size, classes, (0.0,) * 3, (1.0,) * 3)
    labels = torch.arange(classes, device=device).repeat_interleave(per_class)
    train = ClassTensors.from_unsorted(torch.randn(len(labels), 3, size, size, device=device, generator=gen), labels, classes)
    return Splits(info, train, train)


def options(method: str, steps: int, unroll: str) -> dict:
    if method == "dm":
        return {"iterations": steps, "batch_real": 64}
    return {"experts": {"num_experts": 2, "epochs": 2, "parallel": 2, "batch_size": 64}, "iterations": steps,
            "syn_steps": 5, "expert_epochs": 1, "max_start_epoch": 1, "lr_img": 0.1, "lr_lr": 0.0, "lr_teacher": 0.01,
            "unroll": unroll, "checkpoint_every": 0, "guard_every": 10**9, "log_every": 0, "resume": False}


def measure(args, device: torch.device, shape: dict, cache: Cache) -> tuple[float, int]:
    data = splits(shape["classes"], shape["size"], max(64, shape["ipc"]), device)

    def run(steps: int) -> float:
        method = create_method(args.method, splits=data, ipc=shape["ipc"], seed=0, device=device,
                               options=options(args.method, steps, args.unroll), model=MODEL,
                               augment={"enabled": True}, cache=cache)
        sync(device)
        start = time.perf_counter()
        method.distill()
        sync(device)
        return time.perf_counter() - start

    run(1)  # warm-up (and, for MTT, the experts go to the cache)
    times, peaks = [], []
    for _ in range(args.repeats):
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            base = reset_rss_peak() or 0
        times.append((run(args.steps + 1) - run(1)) / args.steps)  # the difference removes the set-up
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else (rss_peak_bytes() or 0)
        peaks.append(peak - base)
    return statistics.median(times), int(statistics.median(peaks))


# MTT's published settings (dataset, classes, size, ipc, N unrolled steps, synthetic images per step)
TRAJECTORY_SETTINGS = [
    ("cifar100", 100, 32, 1, 20, 100), ("cifar100", 100, 32, 10, 20, 1000), ("cifar100", 100, 32, 50, 80, 125),
    ("tinyimagenet", 200, 64, 1, 10, 200), ("tinyimagenet", 200, 64, 10, 20, 200), ("tinyimagenet", 200, 64, 50, 20, 300),
]


def trajectory_memory_model(gpu_gb: float) -> None:
    """Activations of one MTT iteration by the leaf-module memory model (ddbench.training.chunked.Footprint):
    plain unroll keeps N steps of batch_syn images; recompute keeps one."""
    from ddbench.models import create_model
    from ddbench.training.chunked import Footprint

    print(f"trajectory matching, activations per iteration (ConvNet width 128, default depth) vs a {gpu_gb:.0f} GB GPU:")
    for name, classes, size, ipc, steps, batch in TRAJECTORY_SETTINGS:
        net = create_model("convnet", 3, classes, size)
        per_image = Footprint.measure(net, torch.zeros(2, 3, size, size)).grad
        plain, recompute = steps * batch * per_image / 1e9, batch * per_image / 1e9
        verdict = "plain fits" if plain < gpu_gb else ("recompute fits" if recompute < gpu_gb else "neither fits")
        print(f"  {name} ipc {ipc:2d} (N={steps}, batch_syn={batch}): plain {plain:6.1f} GB, recompute {recompute:5.1f} GB "
              f"-> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dm", choices=["dm", "mtt", "ftd", "datm"])
    parser.add_argument("--unroll", default="plain", choices=["plain", "recompute"], help="trajectory methods")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factor", choices=[f for f, _ in GRID], default=None, help="vary only this factor")
    parser.add_argument("--memory-model", action="store_true", help="print the trajectory memory model and stop")
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    args = parser.parse_args()
    if args.memory_model:
        trajectory_memory_model(args.gpu_gb)
        return
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"{args.method}{' (' + args.unroll + ' unroll)' if args.method != 'dm' else ''} on {device}, "
          f"{torch.get_num_threads()} threads; base {BASE}, ConvNet width 32", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(tmp)
        for factor, values in [(f, v) for f, v in GRID if args.factor in (None, f)]:
            for value in values:
                seconds, peak = measure(args, device, {**BASE, factor: value}, cache)
                print(f"  {factor:7s} {value:3d}: {seconds:.3f} s/step, peak memory growth {peak / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
