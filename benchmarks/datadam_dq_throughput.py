"""Throughput of DataDAM (iterations per second, beside DM with the same budget) and of DQ's bin generation.

    python benchmarks/datadam_dq_throughput.py --device cpu                # digits, 20 iterations, 500 rows/class
    python benchmarks/datadam_dq_throughput.py --device cuda --dataset cifar10 --iterations 200 --rows 5000

DataDAM/DM: whole distillations of --iterations iterations at IPC --ipc (after a 2-iteration warm-up), with each
method's default real batch (DataDAM 64, DM 256 per class) and DSA on. DQ: the gradient-embedding similarity and
the recursive GraphCut bins of --classes classes x --rows rows (random δ of C dims and e of --dim dims, the shape
the gradient embedding has for a ConvNet-3 at 32 px), timed separately; prints bins per second. DQ's PCA decoder:
fitting it on the train split (rank 64) and decoding IPC x C images with a random 20 % of their patches dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ddbench.artifact.patches import fill_dropped, fit_pixel_prior, pixel_mask
from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.methods import create_method
from ddbench.methods.dq import gradient_similarity, graphcut_bins
from ddbench.utils import make_generator, resolve_device
from report import emit


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def distill_rate(name: str, splits, ipc: int, iterations: int, device: torch.device, cache: Cache) -> float:
    def run(its: int) -> None:
        create_method(name, splits=splits, ipc=ipc, seed=0, device=device, options={"iterations": its},
                      model={"name": "convnet"}, augment={}, cache=cache).distill()

    run(2)  # warm-up
    return iterations / timed(lambda: run(iterations), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--root", default=None)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rows", type=int, default=500, help="rows per class for the DQ bins")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    splits = load_dataset(args.dataset, root=args.root, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(tmp)
        for name in ("datadam", "dm"):
            rate = distill_rate(name, splits, args.ipc, args.iterations, device, cache)
            print(f"{name:8s} {args.dataset} ipc {args.ipc} on {device}: {rate:.2f} iterations/s")
            emit(f"{name} distillation", f"{args.dataset} ipc {args.ipc}, convnet", rate, "iterations/s", device)

    gen = make_generator(0, device)
    k, n = args.classes, args.rows
    delta = torch.randn(k, n, k, device=device, generator=gen).softmax(-1)
    emb = torch.randn(k, n, args.dim, device=device, generator=gen).relu()
    valid = torch.ones(k, n, dtype=torch.bool, device=device)
    sim: dict[str, torch.Tensor] = {}
    t_sim = timed(lambda: sim.update(s=gradient_similarity(delta, emb)), device)
    bin_size = torch.full((k,), round(n / args.bins), device=device)
    graphcut_bins(sim["s"][:, :64, :64], valid[:, :64], bin_size.clamp_max(6), args.bins)  # warm-up
    t_bins = timed(lambda: graphcut_bins(sim["s"], valid, bin_size, args.bins), device)
    print(f"dq       {k} classes x {n} rows, dim {k}+{k}x{args.dim} on {device}: similarity {t_sim:.3f} s, "
          f"{args.bins} bins/class in {t_bins:.3f} s = {k * args.bins / t_bins:.1f} bins/s "
          f"({k * n / t_bins:.0f} greedy picks/s)")
    emit("dq bins", f"{k} classes x {n} rows, {args.bins} bins/class", k * args.bins / t_bins, "bins/s", device)

    train = splits.train.images
    prior: dict[str, torch.Tensor] = {}
    t_fit = timed(lambda: prior.update(fit_pixel_prior(train, 64)), device)
    images = train[: args.ipc * splits.info.num_classes]
    grid = splits.info.image_size // 2
    keep = (torch.rand(len(images), grid, grid, device=device, generator=gen) > 0.2).to(torch.uint8)
    t_fill = timed(lambda: fill_dropped(images * pixel_mask(keep, 2), keep, 2, "ppca", prior), device)
    print(f"dq       PCA decoder on {args.dataset}: fit on {len(train)} images in {t_fit:.3f} s, "
          f"{len(images) / t_fill:.0f} images decoded/s")
    emit("dq decode", f"{args.dataset}, rank 64, ipc {args.ipc}", len(images) / t_fill, "images/s", device)


if __name__ == "__main__":
    main()
