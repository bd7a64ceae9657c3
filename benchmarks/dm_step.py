"""DM step time and peak memory, beside the reference per-class loop, plus the memory model for larger shapes.

    python benchmarks/dm_step.py                                   # CPU, Fashion-MNIST, IPC 10, batch_real 256
    python benchmarks/dm_step.py --reference /path/to/DatasetCondensation --repeats 5
    python benchmarks/dm_step.py --device cuda                     # + CIFAR-100- and Tiny-sized random tensors

Ours is `ddbench.methods.dm` (ConvNet-3, instance norm, DSA, SGD on the images). With `--reference DIR` (a checkout
of the DM authors' code, imported from DIR at run time), the benchmark also runs the reference's per-class step on
the same images and shapes: for every class, DSA on a real batch and on the class's synthetic images with one
seed, embed both, add the squared distance of the means; then one SGD step. The two run interleaved, `--repeats`
times, and the medians are printed (the CPU may be shared). Peak memory: growth of the peak RSS over the step on
a CPU (Linux), CUDA peak allocated on a GPU.

Larger shapes (CIFAR-100: 100 classes, 3x32x32, ConvNet-3; Tiny-ImageNet: 200 classes, 3x64x64, ConvNet-4): on a
GPU the step runs on random tensors of the dataset's size; everywhere the memory model is printed: activations
of one unchunked step (what a single all-classes forward would need), and the peak of a chunked step on an 80 GB
GPU = data on the device + synthetic state + one chunk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from report import emit

from ddbench.data import DatasetInfo, Splits, load_dataset
from ddbench.data.tensors import ClassTensors
from ddbench.methods import create_method
from ddbench.models import create_model
from ddbench.training.chunked import GPU_FREE_SHARE, ChunkPlan, Footprint
from ddbench.utils import reset_rss_peak, resolve_device, rss_peak_bytes

GB = 1e9
STRATEGY = "color_crop_cutout_flip_scale_rotate"
LARGE = {  # name: (classes, channels, size, train images per class, test images per class)
    "cifar100": (100, 3, 32, 500, 100),
    "tinyimagenet": (200, 3, 64, 500, 50),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Peak memory growth of a block: RSS on a CPU, CUDA allocated bytes on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "Peak":
        sync(self.device)
        if self.device.type == "cuda":
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            peak = rss_peak_bytes()
            self.bytes = None if peak is None or self.base is None else peak - self.base


def random_splits(name: str, device: torch.device) -> Splits:
    return make_splits(*LARGE[name], device=device, name=name)


def make_splits(n_classes: int, channels: int, size: int, train: int, test: int, device: torch.device, name: str = "random") -> Splits:
    """Random tensors of a dataset's shape: `train` and `test` images per class."""
    gen = torch.Generator(device=device).manual_seed(0)
    info = DatasetInfo(name, channels, size, n_classes, (0.0,) * channels, (1.0,) * channels)

    def split(per_class: int) -> ClassTensors:
        labels = torch.arange(n_classes, device=device).repeat_interleave(per_class)
        images = torch.randn(len(labels), channels, size, size, device=device, generator=gen)
        return ClassTensors.from_unsorted(images, labels, n_classes)

    return Splits(info, split(train), split(test))


def ours(splits: Splits, args, device: torch.device, steps: int, budget_mb: float | None = None, width: int = 128) -> float:
    """Seconds per DM step of ddbench (the set-up, a few ms, is counted in)."""
    options = {"iterations": steps, "batch_real": args.batch_real, "memory_budget_mb": budget_mb}
    method = create_method("dm", splits=splits, ipc=args.ipc, seed=0, device=device, options=options,
                           model={"name": "convnet", "width": width}, augment={"enabled": True, "strategy": STRATEGY})
    sync(device)
    start = time.perf_counter()
    method.distill()
    sync(device)
    return (time.perf_counter() - start) / steps


class Reference:
    """The reference DM step (per-class loop of main_DM.py), with its own ConvNet and DiffAugment."""

    def __init__(self, folder: str, splits: Splits, ipc: int, batch_real: int, device: torch.device):
        sys.path.insert(0, str(Path(folder).resolve()))
        import utils as ref  # noqa: PLC0415 - the reference's module, found in `folder` at run time

        self.ref, self.device, self.ipc, self.batch_real = ref, device, ipc, batch_real
        self.info, self.images = splits.info, splits.train.images
        offsets = splits.train.offsets.tolist()
        self.indices = [np.arange(offsets[c], offsets[c + 1]) for c in range(self.info.num_classes)]
        self.param = ref.ParamDiffAug()
        self.syn = torch.cat([self.get_images(c, ipc) for c in range(self.info.num_classes)]).clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.syn], lr=1.0, momentum=0.5)

    def get_images(self, c: int, n: int) -> torch.Tensor:
        return self.images[np.random.permutation(self.indices[c])[:n]]

    def step(self) -> None:
        info, size = self.info, (self.info.image_size, self.info.image_size)
        net = self.ref.get_network("ConvNet", info.channels, info.num_classes, size).to(self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=self.device)
        for c in range(info.num_classes):
            img_real = self.get_images(c, self.batch_real)
            img_syn = self.syn[c * self.ipc:(c + 1) * self.ipc]
            seed = int(time.time() * 1000) % 100000
            img_real = self.ref.DiffAugment(img_real, STRATEGY, seed=seed, param=self.param)
            img_syn = self.ref.DiffAugment(img_syn, STRATEGY, seed=seed, param=self.param)
            # 1-channel crops come back with channels-last strides, which the reference's `view` rejects on
            # current torch: give them plain strides (a copy of 1 MB, the only change to the reference's step)
            img_real, img_syn = (t.clone(memory_format=torch.contiguous_format) for t in (img_real, img_syn))
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss += torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def seconds_per_step(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return (time.perf_counter() - start) / steps


def side_by_side(args, device: torch.device) -> None:
    try:
        splits = load_dataset("fashion_mnist", device=device)
        source = "Fashion-MNIST"
    except Exception:  # noqa: BLE001 - files missing: random tensors of its size
        info = DatasetInfo("fashion_mnist", 1, 28, 10, (0.0,), (1.0,))
        labels = torch.arange(10, device=device).repeat_interleave(6000)
        images = torch.randn(len(labels), 1, 28, 28, device=device, generator=torch.Generator(device).manual_seed(0))
        splits = Splits(info, ClassTensors.from_unsorted(images, labels, 10), ClassTensors.from_unsorted(images[:10], labels[:10], 10))
        source = "random tensors of Fashion-MNIST's size"
    print(f"{source}: IPC {args.ipc}, batch_real {args.batch_real}, ConvNet-3, DSA; {args.repeats} repeats x {args.steps} "
          "steps, interleaved; medians", flush=True)
    reference = Reference(args.reference, splits, args.ipc, args.batch_real, device) if args.reference else None
    times: dict[str, list[float]] = {"ddbench": [], "reference": []}
    peaks: dict[str, list[int]] = {"ddbench": [], "reference": []}
    ours(splits, args, device, 1)  # warm-up
    if reference:
        reference.step()
    for _ in range(args.repeats):
        with Peak(device) as peak:
            times["ddbench"].append(ours(splits, args, device, args.steps))
        peaks["ddbench"].append(peak.bytes)
        if reference:
            with Peak(device) as peak:
                times["reference"].append(reference.seconds_per_step(args.steps))
            peaks["reference"].append(peak.bytes)
    for name in [n for n in times if times[n]]:
        memory = [p for p in peaks[name] if p is not None]
        shown = f"{statistics.median(memory) / 2**20:.0f} MiB" if memory else "n/a"
        print(f"  {name:9s}: {statistics.median(times[name]):.3f} s/step (runs: "
              f"{', '.join(f'{t:.2f}' for t in times[name])}), peak memory growth {shown}", flush=True)
    emit("DM step", "Fashion-MNIST IPC 10, batch_real 256", statistics.median(times["ddbench"]), "s/step", device,
         "<= reference")
    if reference:
        ratio = statistics.median(times["ddbench"]) / statistics.median(times["reference"])
        print(f"  ddbench / reference step time: {ratio:.2f}", flush=True)
        emit("DM step", "ddbench / reference step time", ratio, "ratio", device, "<= 1")


def memory_model(name: str, ipc: int, batch_real: int, gpu_bytes: float) -> None:
    """Unchunked activations of one step, and the chunked step's peak on a GPU of `gpu_bytes`."""
    n_classes, channels, size, train, test = LARGE[name]
    net = create_model("convnet", channels, n_classes, size)
    footprint = Footprint.measure(net, torch.zeros(2, channels, size, size), call=net.embed)
    image = channels * size * size * 4
    data = (train + test) * n_classes * image
    state = 6 * ipc * n_classes * image  # images, gradient, momentum and its update, the guard's last good copy and its update
    real, syn = n_classes * batch_real, n_classes * ipc
    unchunked = real * footprint.no_grad + syn * footprint.grad
    budget = int(GPU_FREE_SHARE * (gpu_bytes - data - state))
    plan = ChunkPlan.make(footprint, budget, torch.device("cuda"))
    real_chunk = min(plan.no_grad, real) * footprint.no_grad
    syn_chunk = min(plan.grad, syn) * footprint.grad
    peak = data + state + max(real_chunk, syn_chunk)
    print(f"  {name} ipc {ipc}: per image {footprint.no_grad / 2**20:.1f} MiB (no grad) / {footprint.grad / 2**20:.1f} MiB "
          f"(grad); one unchunked step {unchunked / GB:.1f} GB of activations; chunked on {gpu_bytes / GB:.0f} GB: "
          f"{min(plan.no_grad, real)} real / {min(plan.grad, syn)} synthetic rows per chunk, peak = data {data / GB:.2f} "
          f"+ state {state / GB:.2f} + chunk {max(real_chunk, syn_chunk) / GB:.1f} = {peak / GB:.1f} GB "
          f"({'fits' if peak <= gpu_bytes else 'does not fit'})", flush=True)


def large_shapes(args, device: torch.device) -> None:
    print(f"larger shapes (batch_real {args.batch_real}, DSA, default ConvNet depth):", flush=True)
    for name in LARGE:
        for ipc in (1, 10, 50):
            memory_model(name, ipc, args.batch_real, args.gpu_gb * GB)
    if device.type != "cuda":
        print("  (no GPU: step times of the larger shapes are measured with --device cuda)")
        return
    for name in LARGE:
        splits = random_splits(name, device)
        for ipc in (1, 10):
            run = argparse.Namespace(**{**vars(args), "ipc": ipc})
            ours(splits, run, device, 1)
            with Peak(device) as peak:
                seconds = ours(splits, run, device, args.steps)
            print(f"  {name} ipc {ipc}: {seconds:.3f} s/step, CUDA peak growth {peak.bytes / GB:.2f} GB", flush=True)
            emit("DM step", f"{name} IPC {ipc}", seconds, "s/step", device)
        del splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads for both (default 1)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="steps per repeat (default: 3 CPU, 20 GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default=None, help="folder of the reference DM code (utils.py, networks.py)")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="GPU size of the memory model (GB)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-side-by-side", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.steps = args.steps or (20 if device.type == "cuda" else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name})", flush=True)
    if not args.skip_side_by_side:
        side_by_side(args, device)
    if not args.skip_large:
        large_shapes(args, device)


if __name__ == "__main__":
    main()
