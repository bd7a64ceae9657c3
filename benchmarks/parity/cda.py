"""CDA / SRe2L recover parity: ddbench.methods.recover beside the reference's recover scripts, on the same inputs.

    python benchmarks/parity/cda.py --reference /path/to/SRe2L      # git clone https://github.com/VILA-Lab/SRe2L

Two reference scripts run, each through its own main_syn() and get_images() (edited as listed in the output;
see common.py): SRe2L's CIFAR recover (`SRe2L/*small_dataset/recover_cifar.py`: roll jitter only, CIFAR-10
clip constants) and CDA's Tiny-ImageNet recover (`CDA/recover_cda_tiny.py`: the cosine curriculum
RandomResizedCrop + flip on the whole batch, roll jitter, Tiny clip constants). Both get:
- the same teacher: ddbench's `resnet18_cifar` (BatchNorm state primed on digits), saved as the checkpoint the
  reference's main_syn loads into its own torchvision ResNet-18 (CIFAR stem, no max-pool);
- the same synthetic batch: the reference draws x ~ N(0,1) per ipc_id, ddbench starts from those images;
- the same draws: the reference's crop boxes (torchvision's RandomResizedCrop.get_params, recorded), flip
  decisions (RandomHorizontalFlip, recorded) and roll offsets (random.randint, recorded by the probe) are
  replayed on ddbench's side, where the G = --groups ipc_ids form one batched forward [G, B, C, H, W] with
  per-group BN statistics.
The class count (100 / 200) and image size (32 / 64) hard-coded in the reference become --classes / --size.

Pieces: the lr schedule; the curriculum's crop-scale lower bound; the augmented batch (crop, flip, roll);
per group and step the CE, the BN-statistics loss R = 10·R_1 + Σ R_l, the total CE + r_bn·R and its gradient on
the images, each at the reference's own iterate x_t with its draw (also with both sides in float64, where the
reference's `torch.float` images and networks become float64); the images after the first Adam step (0.5, 0.9;
cosine lr; clamp to the pixel range) and what is left of that difference beyond what the two gradients predict;
and the images after --iterations steps of both loops, de-normalised by the reference's own function. Where a
piece is not at rounding, the output says why (ReLU kinks in float32 gradients, Adam's g/(|g| + eps), drift).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from common import (DRIFT_NOTE, Edits, Recorder, ReplayAugment, Report, default_dtype, digits, first_step_rows,
                    gradient_rows, import_file, optional_module, prime_batchnorm, quiet, recover_pieces, run_edited,
                    stack_steps, start)
from torchvision import transforms

from ddbench.methods.recover import AugmentDraw, BNStatLoss, cosine_lr, min_crop_scale, optimise, pixel_bounds
from ddbench.models import create_model

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # SRe2L's CIFAR clip/denormalise constants
TINY = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))  # CDA's tiny_clip/tiny_denormalize constants
PROBED = ("iteration", "inputs", "inputs_jit", "loss_ce", "loss_r_bn_feature", "loss", "off1", "off2", "optimizer",
          "min_crop")


class RecordedCrop(transforms.RandomResizedCrop):
    """torchvision's RandomResizedCrop, recording every box (top, left, h, w) it draws."""

    boxes: list[tuple[int, int, int, int]] = []

    def get_params(self, img, scale, ratio):  # noqa: ANN001 (torchvision's signature)
        box = super().get_params(img, scale, ratio)
        RecordedCrop.boxes.append(tuple(int(v) for v in box))
        return box


class RecordedFlip(transforms.RandomHorizontalFlip):
    """torchvision's RandomHorizontalFlip, recording whether it flipped (it returns its input when it does not)."""

    flips: list[bool] = []

    def forward(self, img):  # noqa: ANN001
        out = super().forward(img)
        RecordedFlip.flips.append(out is not img)
        return out


@dataclass
class Run:
    """One run of a reference script: per group its probe records, the saved images, the replayable draws."""

    records: list[list[dict]]
    saved: list[torch.Tensor]
    draws: list[AugmentDraw]
    edits: Edits
    namespace: dict


def run_reference(script: Path, utils: Path, constants: dict, cfg: SimpleNamespace, groups: int, size: int,
                  cropped: bool, dtype: torch.dtype = torch.float32) -> Run:
    """main_syn(cfg, ipc_id) for ipc_id < groups, in `dtype` (float64: the reference's `torch.float` images and
    its networks built under that default dtype)."""
    edits = Edits(constants=constants, probes={"loss.backward()": "_probe"},
                  expressions={"torch.float": "torch.float64"} if dtype == torch.float64 else {})
    probe = Recorder(PROBED)
    names = {"NUM_CLASSES": cfg.classes, "IMAGE_SIZE": size, "_probe": probe, "print": quiet}
    modules = {"utils": import_file(utils, "reference_utils"), **optional_module("wandb")}
    ns = run_edited(script, edits, names, modules)
    saved: list[torch.Tensor] = []
    ns["save_images"] = lambda _args, images, targets, ipc_id: saved.append(images.detach().clone())
    ns["transforms"] = SimpleNamespace(Compose=transforms.Compose, RandomResizedCrop=RecordedCrop,
                                       RandomHorizontalFlip=RecordedFlip)
    RecordedCrop.boxes, RecordedFlip.flips = [], []
    with default_dtype(dtype):
        for ipc_id in range(groups):
            ns["main_syn"](cfg, ipc_id)
    t_steps = cfg.iteration
    records = [probe.calls[g * t_steps:(g + 1) * t_steps] for g in range(groups)]
    boxes = torch.tensor(RecordedCrop.boxes, dtype=torch.float32).view(groups, t_steps, 4) if cropped else None
    flips = torch.tensor(RecordedFlip.flips).view(groups, t_steps) if cropped else None
    draws = []
    for t in range(t_steps):  # the reference's draws as ddbench AugmentDraws, stacked over the groups
        shifts = torch.tensor([[group[t]["off1"], group[t]["off2"]] for group in records])
        draws.append(AugmentDraw(None if boxes is None else boxes[:, t], None if flips is None else flips[:, t],
                                 shifts))
    return Run(records, saved, draws, edits, ns)


def step_pieces(teacher: torch.nn.Module, run: Run, cfg: SimpleNamespace) -> dict[str, torch.Tensor]:
    """ddbench's pieces at every step t, at the reference's iterate x_t with its draw: each [T,G,...]."""
    groups, k, dtype = len(run.records), cfg.classes, next(teacher.parameters()).dtype
    labels = torch.arange(k).expand(groups, k)
    bn = BNStatLoss(teacher, cfg.first_bn_multiplier)
    steps = []
    for t, draw in enumerate(run.draws):
        x_t = torch.stack([group[t]["inputs"] for group in run.records]).to(dtype)  # [G,B,C,H,W]
        steps.append(recover_pieces(teacher, bn, x_t, lambda p: p, labels, cfg.r_bn, draw))
    bn.remove()
    return {key: torch.stack([step[key] for step in steps]) for key in steps[0]}


REFERENCE_KEYS = {"augmented": "inputs_jit", "CE": "loss_ce", "R": "loss_r_bn_feature", "total": "loss",
                  "grad": "inputs.grad"}
NAMES = {"augmented": "augmented batch", "CE": "CE", "R": "BN loss R (first BN x10)", "total": "total loss",
         "grad": "gradient on the images"}


def compare(report: Report, label: str, teacher: torch.nn.Module, run: Run, run64: Run, cfg: SimpleNamespace,
            constants: tuple, cropped: bool) -> None:
    """Every piece of one reference script beside ddbench's, rows named '<label>: piece'."""
    ours = step_pieces(teacher, run, cfg)
    teacher64 = copy.deepcopy(teacher).double()
    ours64 = step_pieces(teacher64, run64, cfg)
    t_steps, groups = len(run.records[0]), len(run.records)
    report.close(f"{label}: lr schedule", [cosine_lr(cfg.lr, t, t_steps) for t in range(t_steps)],
                 [r["optimizer"] for r in run.records[0]])
    if cropped:
        lows = [min_crop_scale(t, t_steps, "cosine", cfg.milestone, 0.08) for t in range(t_steps)]
        report.close(f"{label}: crop scale lower bound", lows, [r["min_crop"] for r in run.records[0]])
        boxes = torch.stack([draw.boxes for draw in run.draws])
        report.same(f"{label}: crop boxes and flips replayed", True,
                    f"{len(boxes.flatten(0, 1))} boxes ({int((boxes[..., 2:] < cfg.size).any(-1).sum())} crops), "
                    f"{int(torch.stack([d.flips for d in run.draws]).sum())} flips")
    for key in ("augmented", "CE", "R", "total"):
        report.close(f"{label}: {NAMES[key]}", ours[key], stack_steps(run.records, REFERENCE_KEYS[key]))
    for key in ("CE", "R"):
        report.close(f"{label}: {NAMES[key]}, float64", ours64[key], stack_steps(run64.records, REFERENCE_KEYS[key]),
                     note=FLOAT64_NOTE)

    def exact_at(t: int) -> torch.Tensor:  # ddbench's float64 gradient at the reference's float32 iterate x_t
        step = Run([[group[t]] for group in run.records], [], [run.draws[t]], run.edits, {})
        return step_pieces(teacher64, step, cfg)["grad"][0]

    gradient_rows(report, f"{label}: {NAMES['grad']}", ours["grad"], stack_steps(run.records, "inputs.grad"),
                  ours64["grad"], stack_steps(run64.records, "inputs.grad"), exact_at)

    labels = torch.arange(cfg.classes).expand(groups, cfg.classes)
    bn = BNStatLoss(teacher, cfg.first_bn_multiplier)
    x0 = torch.stack([group[0]["inputs"] for group in run.records])  # the reference's N(0,1) draws
    bounds = pixel_bounds(*constants, x0.device)
    x, iterates = x0.clone(), []
    optimise(x, lambda p: p, labels, teacher, bn, iterations=t_steps, lr=cfg.lr, r_bn=cfg.r_bn,
             augment=ReplayAugment(run.draws), generator=torch.Generator(), bounds=bounds,
             progress=lambda _: iterates.append(x.detach().clone()))
    bn.remove()
    first_step_rows(report, label, iterates[0], torch.stack([group[1]["inputs"] for group in run.records]),
                    ours["grad"][0], stack_steps(run.records, "inputs.grad")[0], cfg.lr)
    denormalize = run.namespace["denormalize_cifar" if "denormalize_cifar" in run.namespace else "tiny_denormalize"]
    report.close(f"{label}: images after {t_steps} steps", denormalize(x.flatten(0, 1).clone()), torch.cat(run.saved),
                 note=DRIFT_NOTE)


FLOAT64_NOTE = ("ddbench computes the BN statistics and the CE in float32 even for float64 inputs (BNStatLoss and "
                "recover_loss cast with .float(), for bf16 autocast), so its float64 run agrees to ~1e-7.")
VARIANTS = (  # label, script, its utils, clip constants, hard-coded (classes, size), lr, r_bn, crop+flip
    ("SRe2L-CIFAR", "SRe2L/*small_dataset/recover_cifar.py", "SRe2L/*small_dataset/utils.py", CIFAR10, (100, 32),
     0.25, 0.01, False),
    ("CDA-Tiny", "CDA/recover_cda_tiny.py", "CDA/utils.py", TINY, (200, 64), 0.4, 0.05, True),
)


def main() -> int:
    warnings.filterwarnings("ignore", message="Arguments other than a weight enum")  # the reference's weights=False
    args, report = start(__doc__, "VILA-Lab/SRe2L", "CDA/recover_cda_tiny.py",
                         "CDA / SRe2L recover: ddbench.methods.recover vs the reference", {
                             "--classes": (10, "classes, one image each per group"), "--size": (16, "image size"),
                             "--groups": (2, "ipc_ids (groups) run by both"), "--iterations": (4, "recover steps"),
                             "--iterations64": (2, "steps of the float64 runs")})
    gen = torch.Generator().manual_seed(args.seed)
    k, size = args.classes, args.size
    teacher = create_model("resnet18_cifar", 3, k, size).requires_grad_(False)
    edits = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, script, utils, consts, (n_hard, size_hard), lr, r_bn, cropped in VARIANTS:
            prime_batchnorm(teacher, digits(k, 8, size, 3, *consts, seed=args.seed)[0], gen)
            state = teacher.state_dict()
            ckpt = Path(tmp) / f"{label}.pth"  # CIFAR: saved from DataParallel ('module.' keys); Tiny: {'model': ...}
            torch.save({"state_dict": {"module." + key: v for key, v in state.items()}} if not cropped
                       else {"model": state}, ckpt)
            constants = {"get_images": {n_hard: "NUM_CLASSES", size_hard: "IMAGE_SIZE"},
                         "main_syn": {n_hard: "NUM_CLASSES"}}
            cfg = SimpleNamespace(classes=k, size=size, syn_data_path=str(Path(tmp) / "syn"), store_best_images=True,
                                  batch_size=k, iteration=args.iterations, lr=lr, jitter=4, r_bn=r_bn,
                                  first_bn_multiplier=10.0, arch_name="resnet18", arch_path=str(ckpt),
                                  verifier=False, easy2hard_mode="cosine", milestone=1.0)
            paths = (args.reference / script, args.reference / utils, constants)
            run = run_reference(*paths, cfg, args.groups, size, cropped)
            run64 = run_reference(*paths, SimpleNamespace(**{**vars(cfg), "iteration": args.iterations64}),
                                  args.groups, size, cropped, torch.float64)
            edits += [run.edits, run64.edits]
            compare(report, label, teacher, run, run64, cfg, consts, cropped)
    return report.print(edits, args.json)


if __name__ == "__main__":
    sys.exit(main())
