"""DQ parity: ddbench.methods.dq beside Dataset Quantization's reference (magic-research/Dataset_Quantization).

    python benchmarks/parity/dq.py --reference /path/to/Dataset_Quantization
        # git clone https://github.com/magic-research/Dataset_Quantization

Bins. The reference's non-overlapping bin loop (quantize_sample.py main(): `for exp in range(args.num_exp)`,
wrapped in a function because it ends in `return`) runs with its bundled DeepCore: Submodular (balance=True,
GraphCut, NaiveGreedy) on EarlyTrain with 0 selection epochs, i.e. its calc_gradient gradient embeddings
g = [δ, vec(δ eᵀ)] of CE(softmax(z), y) (DeepCore's double softmax), cossim_np similarities 0.5 + 0.5·cos,
per class. Its network is its own ResNet18 (ResNet_32x32), into which the script copies ddbench's resnet18_cifar
weights (BatchNorm primed on digits) when EarlyTrain builds it; its dataset is a stand-in with the same
interface (`classes`, `targets`) holding digits at 32 px. ddbench gets the same network, images and labels, with
method.gradient=reference (its DeepCore option; the default 'plain' CE on the logits is a documented choice).
The probes record the reference's gradient matrices and the order of its greedy picks (GraphCut.update_state).

Pieces: the logit gradient δ (per class, the reference's rows × its batch size: its CE is a batch mean, which a
cosine ignores), the similarity matrix per class, every bin's indices per class (as sets, and in pick order),
and ddbench's greedy on the reference's own similarity; with equal class sizes and with unequal ones.

Patch-drop mask. The reference's MaskedAutoencoderViT.cam_masking (mae_models.py, its 14x14 grid hard-coded) and
ddbench's keep_mask get the same CAMs (ddbench's Grad-CAM of the network above for the true class; the reference
computes GradCAM++ of an ImageNet ResNet-18 for its top-1 ImageNet class, which needs downloaded weights and is a
documented substitution, spec §4.6) and mask_ratio 0.2.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torchvision
from common import (Edits, Report, copy_weights, digits, extract, extract_function, import_package, prime_batchnorm,
                    quiet, start)

from ddbench.methods.dq import DatasetQuantization, gradient_similarity, grad_cam, graphcut_bins, keep_mask
from ddbench.methods.dq import bin_sizes as dq_bin_sizes
from ddbench.models import create_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the reference's CIFAR10() selection constants
BALANCED, UNEQUAL = [20] * 5, [20, 23, 17, 21, 19]


class Images(torch.utils.data.Dataset):
    """What the reference's datasets.CIFAR10 returns, for in-memory images: (image, label), .classes, .targets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: int):
        self.images, self.targets, self.classes = images, labels, list(range(classes))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


def reference_package(ref: Path) -> types.ModuleType:
    """The checkout's `dq` package (its DeepCore) with its progress prints and bars silenced."""
    dq = import_package(ref / "dq", "reference_dq", ("methods", "nets"))
    for module in (dq.methods.earlytrain, dq.methods.submodular):
        module.print = quiet
    dq.methods.methods_utils.submodular_optimizer.tqdm = lambda iterable, **kwargs: iterable
    return dq


def reference_bins(ref: Path, dq: types.ModuleType, model: torch.nn.Module, data: Images, num_bins: int) -> dict:
    """quantize_sample's bin loop on `data` with `model`'s weights: per bin the saved (dataset) indices, the
    picks in order, and the gradient matrices of the first bin per class."""
    saved, picks, gradients, methods = [], [], [], []
    submodular, graphcut = dq.methods.Submodular, dq.methods.methods_utils.submodular_function.GraphCut
    calc, update, build = submodular.calc_gradient, graphcut.update_state, dq.nets.ResNet18

    def record_gradient(self, index=None):  # noqa: ANN001, ANN202 (the reference's signature)
        out = calc(self, index)
        gradients.append((np.asarray(self.dst_train.indices)[index], out))
        return out

    def record_pick(self, new_selection, total_selected, **kwargs):  # noqa: ANN001, ANN202
        picks.append(int(self.index[new_selection][0]))
        return update(self, new_selection, total_selected, **kwargs)

    def with_our_weights(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        net = build(*args, **kwargs)
        copy_weights(model, net)
        return net

    def method(dst_train, args, fraction, seed, **kwargs):  # noqa: ANN001, ANN202
        methods.append((np.asarray(dst_train.indices), len(picks)))
        return submodular(dst_train, args, fraction, seed, **kwargs)

    numpy = types.ModuleType("numpy")  # the reference's np, with np.save recorded
    numpy.__dict__.update(np.__dict__)
    numpy.save = lambda path, array: saved.append(np.asarray(array))
    args = SimpleNamespace(dataset="Parity", data_path="", model="ResNet18", selection="Submodular",
                           num_exp=num_bins, batch=128, gpu=None, print_freq=50, fraction=1 / num_bins, seed=0,
                           workers=0, selection_epochs=0, selection_momentum=0.9, selection_weight_decay=5e-4,
                           selection_optimizer="SGD", selection_nesterov=True, selection_lr=0.1, balance=True,
                           replace=False, pretrained=False, submodular="GraphCut", submodular_greedy="NaiveGreedy",
                           save_path="", device="cpu", selection_test_interval=1, selection_test_fraction=1.0)
    args.selection_batch = args.batch
    classes, channels, size = len(data.classes), data.images.shape[1], tuple(data.images.shape[-2:])
    ns = {"np": numpy, "torch": torch, "os": __import__("os"), "print": quiet, "args": args,
          "datasets": SimpleNamespace(Parity=lambda path: (channels, size, classes, data.classes, MEAN, STD, data,
                                                           None)),
          "methods": SimpleNamespace(Submodular=method)}
    code = extract(ref / "quantize_sample.py", "for exp in range(args.num_exp)", "for exp in range(args.num_exp)",
                   Edits(), function="bin_loop")
    submodular.calc_gradient, graphcut.update_state, dq.nets.ResNet18 = record_gradient, record_pick, with_our_weights
    try:
        exec(code, ns)
        ns["bin_loop"]()
    finally:
        submodular.calc_gradient, graphcut.update_state, dq.nets.ResNet18 = calc, update, build
    order = []
    for e, (avail, start) in enumerate(methods):
        end = methods[e + 1][1] if e + 1 < len(methods) else len(picks)
        order.append(avail[picks[start:end]])
    return {"bins": saved, "order": order, "first_gradients": gradients[:classes]}


def ours_bins(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, counts: list[int],
              num_bins: int, sim_override: list[np.ndarray] | None = None) -> dict:
    """ddbench's steps 1-2 of DQ.distill on the same data: δ, similarities, bins, and each bin's pick order."""
    k, n_max = len(counts), max(counts)
    counts_t = torch.tensor(counts)
    valid = torch.arange(n_max) < counts_t[:, None]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts_t.cumsum(0)])
    rows = offsets[:-1, None] + torch.arange(n_max).clamp_max(counts_t[:, None] - 1)
    fake = SimpleNamespace(splits=SimpleNamespace(train=SimpleNamespace(images=images, labels=labels)),
                           opts=SimpleNamespace(gradient="reference"))
    delta, emb = DatasetQuantization._gradient_parts(fake, model, rows.flatten())
    delta = delta.view(k, n_max, -1) * valid.unsqueeze(-1)
    emb = emb.view(k, n_max, -1) * valid.unsqueeze(-1)
    sim = gradient_similarity(delta, emb) * (valid.unsqueeze(-1) & valid.unsqueeze(1))
    if sim_override is not None:  # the reference's own similarities (float32), padded
        sim = torch.zeros(k, n_max, n_max)
        for c, s in enumerate(sim_override):
            sim[c, :len(s), :len(s)] = torch.from_numpy(s)
    sizes = torch.tensor(dq_bin_sizes(counts, num_bins))  # [K, num_bins - 1], as DQ.distill
    bins = graphcut_bins(sim, valid, sizes, num_bins)
    order = []  # greedy is prefix-consistent: the first t picks of bin b = bin 0 of budget t on bin b's pool
    for b in range(num_bins - 1):
        pool, seq, size = valid & (bins >= b), [], sizes[:, b]
        for t in range(1, int(size.max()) + 1):
            first = graphcut_bins(sim, pool, torch.minimum(size, torch.tensor(t)), 2) == 0
            seq.append(first)
        picked = [rows[c][seq[0][c]].tolist() for c in range(k)]
        for t in range(1, len(seq)):
            for c in range(k):
                picked[c] += rows[c][seq[t][c] & ~seq[t - 1][c]].tolist()
        order.append(np.concatenate([np.array(p, dtype=np.int64) for p in picked]))
    return {"delta": delta, "sim": sim, "valid": valid, "rows": rows, "bins": bins, "order": order}


def bin_sizes(ours: dict, ref: dict, num_bins: int) -> list[str]:
    """Per bin, the per-class sizes 'ddbench/reference' (where they differ)."""
    rows, bins, k = ours["rows"], ours["bins"], ours["rows"].shape[0]
    out = []
    for b in range(num_bins):
        mine = [int(((bins == b)[c]).sum()) for c in range(k)]
        theirs = [int(np.isin(rows[c][ours["valid"][c]].numpy(), ref["bins"][b]).sum()) for c in range(k)]
        if mine != theirs:
            out.append(f"bin {b}: {mine} vs {theirs}")
    return out


def compare_bins(report: Report, label: str, ours: dict, ref: dict, num_bins: int, note: str = "") -> None:
    """Rows: every bin's dataset indices per class as sets, and the greedy's pick order in every bin but the last
    (the remainder)."""
    rows, bins = ours["rows"], ours["bins"]
    sets_equal = 0
    for b in range(num_bins):
        mine = np.sort(rows[bins == b].numpy())
        theirs = np.sort(ref["bins"][b]) if b < len(ref["bins"]) else np.array([], dtype=np.int64)
        sets_equal += int(np.array_equal(mine, theirs))
    report.same(f"{label}: bin indices per class (sets)", sets_equal == num_bins,
                f"{sets_equal}/{num_bins} bins equal", note=note)
    orders_equal = sum(int(np.array_equal(o, r)) for o, r in zip(ours["order"], ref["order"]))
    report.same(f"{label}: greedy pick order per bin", orders_equal == num_bins - 1,
                f"{orders_equal}/{num_bins - 1} bins in the same order", note="as above" if note else "")


def compare_mask(report: Report, ref: Path, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 mask_ratio: float = 0.2) -> None:
    """ddbench's keep_mask beside the reference's cam_masking on the same CAMs (14 x 14 patch grid)."""
    ns = {"torch": torch, "torchvision": torchvision}
    exec(extract_function(ref / "mae_models.py", "cam_masking"), ns)
    cam = grad_cam(model, images, labels)
    tokens = torch.zeros(len(cam), 14 * 14, 1)
    _, removed, _ = ns["cam_masking"](None, tokens, [[c.unsqueeze(0)] for c in cam], mask_ratio)
    ref_keep = (removed == 0).view(-1, 14, 14)
    ours = keep_mask(cam, (14, 14), mask_ratio).bool()
    n_ours, n_ref = int(ours[0].sum()), int(ref_keep[0].sum())
    report.same("patch-drop mask: patches kept per image", n_ours == n_ref, f"ddbench {n_ours}, reference {n_ref}",
                note=("ddbench's keep_mask keeps int(L·(1 − mask_ratio)) patches (at least 1), as the reference's "
                      "cam_masking (mae_models.py `len_keep = int(L * (1 - mask_ratio))`)"))
    equal_count = keep_mask(cam, (14, 14), 1 - n_ref / 196).bool().flatten(1)  # the reference's count
    ref_flat = ref_keep.flatten(1)
    differ = equal_count != ref_flat
    scores = torch.nn.functional.interpolate(cam.unsqueeze(1), size=(14, 14), mode="bilinear",
                                             align_corners=False).flatten(1)
    boundary = torch.where(ref_flat, scores, torch.inf).min(1, keepdim=True).values  # the last kept score
    ties_only = bool((~differ | torch.isclose(scores, boundary.expand_as(scores))).all())
    report.same("patch-drop mask at the reference's count", not differ.any(),
                f"{int(differ.any(1).sum())}/{len(cam)} images differ",
                note=f"only at patches whose CAM score ties the last kept one ({int(differ.sum())} patches; Grad-CAM "
                     "is 0 wherever its ReLU cuts, so the boundary is often a run of zeros): argsort (reference) "
                     "and topk (ddbench) break ties differently; every untied patch is kept or dropped alike."
                if ties_only else "")


def main() -> int:
    args, report = start(__doc__, "magic-research/Dataset_Quantization", "quantize_sample.py",
                         "DQ: ddbench.methods.dq vs the reference (its bundled DeepCore)",
                         {"--bins": (5, "GraphCut bins (fraction 1/bins)")})
    dq = reference_package(args.reference)
    gen = torch.Generator().manual_seed(args.seed)
    model = create_model("resnet18_cifar", 3, 5, 32).requires_grad_(False)
    for label, counts in (("equal classes", BALANCED), ("unequal classes", UNEQUAL)):
        images, labels = digits(len(counts), counts, 32, 3, MEAN, STD, seed=args.seed)
        if label == "equal classes":
            prime_batchnorm(model, images, gen)
            with torch.no_grad():  # a larger head: logits of a few units, so the double softmax is not flat
                model.fc.weight.mul_(8)
        ref = reference_bins(args.reference, dq, model, Images(images, labels, len(counts)), args.bins)
        ours = ours_bins(model, images, labels, counts, args.bins)
        ref_sims = [dq.methods.methods_utils.cossim_np(g, g) for _, g in ref["first_gradients"]]
        for c, (indices, g) in enumerate(ref["first_gradients"]):
            n = len(indices)
            assert n <= 128, "one calc_gradient batch per class (its CE is a batch mean)"
            report.close(f"{label}: logit gradient δ / class size, class {c}", ours["delta"][c, :n] / n,
                         g[:, :len(counts)])
            report.close(f"{label}: similarity 0.5 + 0.5·cos(g, g), class {c}", ours["sim"][c, :n, :n], ref_sims[c])
        uneven = ("the per-class bin sizes differ (ddbench: methods/dq.py bin_sizes; the reference: quantize_sample.py "
                  "`fraction = coreset_size / len(avail_indices)`, submodular.py `budget=round(self.fraction * "
                  "len(c_indx))`). Sizes (ddbench, reference) per bin: " + str(bin_sizes(ours, ref, args.bins)))
        compare_bins(report, label, ours, ref, args.bins, note=uneven)
        same_sim = ours_bins(model, images, labels, counts, args.bins, sim_override=ref_sims)
        compare_bins(report, f"{label}, the reference's similarities", same_sim, ref, args.bins,
                     note="the bin sizes, as above" if uneven else "")
        if label == "equal classes":
            compare_mask(report, args.reference, model, images, labels)
    return report.print([], args.json)


if __name__ == "__main__":
    sys.exit(main())
