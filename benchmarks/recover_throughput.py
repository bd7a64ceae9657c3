"""Throughput of the CDA/INFER recover step: all IPC groups in one batched forward, in the default chunks of groups
per forward (method.groups_per_forward=0: all on a GPU, ~32 images on a CPU), and one group at a time.

    python benchmarks/recover_throughput.py                                   # CPU sample: convnet_bn, 16 px
    python benchmarks/recover_throughput.py --device cuda --model resnet18_cifar --size 32 --channels 3 \\
        --classes 100 --groups 50 --steps 20                                  # CIFAR-100 IPC 50 on a GPU

Both paths run the same objective (CE + r_bn·per-group BN-statistics loss, per-group crop/flip/roll, Adam,
clamp) on a teacher with random weights and running statistics (the cost does not depend on its training).
The loop is the reference's structure: one optimiser and one forward of C images per group. Prints
images × iterations per second for both and their ratio (and THROUGHPUT lines for benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from report import emit

from ddbench.methods.recover import BNStatLoss, RecoverAugment, forward_chunk, optimise
from ddbench.models import create_model
from ddbench.utils import make_generator, resolve_device


def run(x: torch.Tensor, labels: torch.Tensor, teacher, bn, steps: int, device: torch.device,
        chunk: int | None = None) -> float:
    """Seconds for `steps` recover iterations on x [G,B,C,H,W] (optimised in place)."""
    augment = RecoverAugment(crop="cosine")
    low = torch.full((1, x.shape[2], 1, 1), -3.0, device=device)
    bounds = (low, -low)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    optimise(x, lambda p: p, labels, teacher, bn, iterations=steps, lr=0.25, r_bn=0.01, augment=augment,
             generator=make_generator(0, device), bounds=bounds, chunk=chunk)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="convnet_bn")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10, help="images per group (one per class)")
    parser.add_argument("--groups", type=int, default=10, help="groups = IPC")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the machine may be shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    teacher = create_model(args.model, args.channels, args.classes, args.size).to(device).eval()
    teacher.requires_grad_(False)
    bn = BNStatLoss(teacher)
    shape = (args.groups, args.classes, args.channels, args.size, args.size)
    x = torch.randn(shape, device=device)
    labels = torch.arange(args.classes, device=device).expand(args.groups, -1)
    run(x[:1].clone(), labels[:1], teacher, bn, 1, device)  # warm-up
    batched = run(x.clone(), labels, teacher, bn, args.steps, device)
    chunk = forward_chunk(0, args.classes, device)
    chunked = run(x.clone(), labels, teacher, bn, args.steps, device, chunk)
    loop = sum(run(x[g : g + 1].clone(), labels[g : g + 1], teacher, bn, args.steps, device)
               for g in range(args.groups))
    work = args.groups * args.classes * args.steps
    print(f"recover {args.model} {args.size}px on {device}: {args.groups} groups x {args.classes} images, "
          f"{args.steps} steps")
    print(f"  batched:    {work / batched:10.1f} images x iterations / s")
    print(f"  default:    {work / chunked:10.1f} images x iterations / s  ({chunk or args.groups} groups per forward)")
    print(f"  per group:  {work / loop:10.1f} images x iterations / s")
    print(f"  batched / per group:  {loop / batched:6.2f} x")
    print(f"  default / per group:  {loop / chunked:6.2f} x")
    what = f"{args.model} {args.size}px, IPC {args.groups} x {args.classes} classes"
    emit("recover (CDA/INFER)", f"batched, {what}", work / batched, "images x it / s", device)
    emit("recover (CDA/INFER)", f"default chunks ({chunk or args.groups} groups), {what}", work / chunked,
         "images x it / s", device)
    emit("recover (CDA/INFER)", f"one group at a time, {what}", work / loop, "images x it / s", device)
    emit("recover (CDA/INFER)", "default / loop", loop / chunked, "x", device, "never below 1x")
    emit("recover (CDA/INFER)", "batched / loop", loop / batched, "x", device, "10x on a GPU at IPC 50")


if __name__ == "__main__":
    main()
