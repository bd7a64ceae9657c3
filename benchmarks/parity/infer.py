"""INFER parity: ddbench's UFC step and static labels beside the reference's (zhangxin-xd/UFC), same inputs.

    python benchmarks/parity/infer.py --reference /path/to/UFC        # git clone https://github.com/zhangxin-xd/UFC

The reference runs through its own code, edited as listed in the output (see common.py):
`ufc_generation/ufc_cifar.py` generation() + get_images() for every ipc_id of CIFAR-10 (M = 4 teachers,
ipc_init = int(ipc / (M/C + 1)) real groups), and the static-labelling block of `ufc_validation/val_static.py`
(its model loading and the mean of the 4 teachers' logits). Both sides get:
- the same teachers: ddbench's resnet18_cifar, mobilenetv2_cifar and efficientnet_b0_cifar (BatchNorm state
  primed on digits) copied by state_dict order into the reference's torchvision ResNet-18, MobileNetV2_cifar10 and
  EfficientNetB0_cifar10 (whose unused expand conv/BN of the first block keeps its init: the reference drops that
  BN from its loss, ddbench does not build it), written as the `pretrained/cifar10/*/ckpt.pth` files the
  reference loads; ShuffleNetG2 has no ddbench counterpart (ddbench's fourth default teacher is VGG-11-BN), so the
  reference's own ShuffleNetG2_cifar10 module (primed) is the fourth member on both sides;
- the same real groups: digits at 32 px, one image per class per group, as the reference's init tensor_k.pt;
- the same roll offsets (the reference's random.randint draws, recorded by the probe).
The image size 32 hard-coded in get_images becomes the script's constant (the reference's CIFAR networks need 32).

Pieces: the budget rule ipc_init (ddbench's real_groups beside the reference's own expression, over a grid of
IPC, C and M); per teacher m and step t, at the reference's own UFC u_t: the rolled batch X_k + u, the CE, the
BN-statistics loss R_m (first BN x10; EfficientNet without its unused BN), the total CE + r_bn·R_m and its
gradient on u (all G groups batched on ddbench's side, per-group BN statistics; the gradient also with both sides
in float64); u after one Adam step and after all steps; the decode X + u clipped to the pixel range, at the u
the reference saves; the static labels (mean of the 4 teachers' logits) on the materialised training set.
Where a piece is not at rounding, the output says why.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from common import (DRIFT_NOTE, Edits, Recorder, ReplayAugment, Report, copy_weights, default_dtype, digits, extract,
                    first_step_rows, gradient_rows, import_file, optional_module, prime_batchnorm, quiet,
                    recover_pieces, run_edited, stack_steps, start)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ddbench.artifact.decode import materialise_ufc
from ddbench.methods.infer import INFER, real_groups
from ddbench.methods.recover import AugmentDraw, BNStatLoss, cosine_lr, optimise, pixel_bounds
from ddbench.models import create_model
from ddbench.training import Teacher
from ddbench.utils import DDBenchError

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the reference's clip_image('cifar10')
K, SIZE, M = 10, 32, 4
CHECKPOINTS = ("resnet18_E200", "mobilenetV2_E200", "efficientnet_E200", "shufflenet_E200")
OURS = ("resnet18_cifar", "mobilenetv2_cifar", "efficientnet_b0_cifar")
PROBED = ("ipc_id", "model_index", "iteration", "inputs_jit", "uni_perb", "loss_ce", "loss_r_bn_feature", "loss",
          "off1", "off2", "optimizer")
EFFICIENTNET_UNUSED = ("layers.0.conv1.", "layers.0.bn1.")  # expansion-1 block: built, never run
TEACHER_NAMES = ("ResNet-18", "MobileNetV2", "EfficientNet-B0", "ShuffleNetG2 (reference module)")


def reference_teachers(ref: Path, ours: list[nn.Module], gen: torch.Generator, images: torch.Tensor,
                       folder: Path) -> tuple[dict, nn.Module]:
    """Write our weights as the reference's four checkpoints under folder/pretrained/cifar10; returns the
    reference's model modules and its (primed) ShuffleNetG2_cifar10, the fourth member on both sides."""
    modules = {name: import_file(ref / "models" / f"{name}.py", name)
               for name in ("mobilenetv2", "efficientnet", "shufflenet")}
    modules["utils"] = import_file(ref / "ufc_generation" / "utils.py", "reference_utils")
    shuffle = prime_batchnorm(modules["shufflenet"].ShuffleNetG2_cifar10(), images, gen).requires_grad_(False)
    targets = [None, modules["mobilenetv2"].MobileNetV2_cifar10(), modules["efficientnet"].EfficientNetB0_cifar10()]
    states = [ours[0].state_dict()]  # ddbench's resnet18_cifar is torchvision's ResNet: the keys match
    for model, target, skip in zip(ours[1:], targets[1:], ((), EFFICIENTNET_UNUSED)):
        copy_weights(model, target, skip_dst=skip)
        states.append(target.state_dict())
    states.append(shuffle.state_dict())
    for name, state in zip(CHECKPOINTS, states):  # saved from DataParallel: 'module.' keys
        path = folder / "pretrained" / "cifar10" / name / "ckpt.pth"
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return modules, shuffle


def run_reference(ref: Path, modules: dict, folder: Path, cfg: SimpleNamespace, groups: list[int],
                  dtype: torch.dtype = torch.float32) -> tuple[list, list, list, Edits]:
    """generation(cfg, ipc_id) for the UFC ipc_ids of the given real groups (ipc_id = (m + 1)·ipc_init + k;
    the ipc_ids below ipc_init run 0 iterations and only save X_k, so they are skipped): per teacher m and group k
    the probe records before and after each Adam step, and per (m, k) the saved images."""
    edits = Edits(constants={"get_images": {32: "IMAGE_SIZE"}},
                  probes={"loss.backward()": "_probe", "optimizer.step()": "_after"},
                  expressions={"torch.float": "torch.float64"} if dtype == torch.float64 else {})
    probe, after = Recorder(PROBED), Recorder(("uni_perb",))
    ns = run_edited(ref / "ufc_generation" / "ufc_cifar.py", edits,
                    {"IMAGE_SIZE": SIZE, "_probe": probe, "_after": after, "print": quiet},
                    {**modules, **optional_module("wandb")})
    saved: list[torch.Tensor] = []
    ns["save_images"] = lambda _args, images, targets, ipc_id: saved.append(images.detach().clone())
    t_steps, n = cfg.iteration, len(groups)
    with contextlib.chdir(folder), default_dtype(dtype):
        for m in range(M):
            for k in groups:
                ns["generation"](cfg, (m + 1) * cfg.ipc_init + k)
    split = [[calls[(m * n + k) * t_steps:(m * n + k + 1) * t_steps] for k in range(n)] for m in range(M)
             for calls in (probe.calls, after.calls)]
    return split[0::2], split[1::2], [saved[m * n:(m + 1) * n] for m in range(M)], edits


def draws_of(records: list[list[dict]]) -> list[AugmentDraw]:
    """The reference's roll offsets as ddbench draws (no crop, no flip in INFER's CIFAR recover)."""
    return [AugmentDraw(None, None, torch.tensor([[group[t]["off1"], group[t]["off2"]] for group in records]))
            for t in range(len(records[0]))]


def step_pieces(member: nn.Module, groups: torch.Tensor, records: list[list[dict]], r_bn: float) -> dict:
    """ddbench's pieces at every step, at the reference's u_t: each [T,G,...]."""
    g = groups.shape[0]
    targets = torch.arange(K).expand(g, K)
    bn = BNStatLoss(member, 10.0)
    steps = [recover_pieces(member, bn, torch.stack([group[t]["uni_perb"] for group in records]).to(groups.dtype),
                            lambda p: groups + p, targets, r_bn, draw) for t, draw in enumerate(draws_of(records))]
    bn.remove()
    return {key: torch.stack([step[key] for step in steps]) for key in steps[0]}


NAMES = {"augmented": ("rolled batch X + u", "inputs_jit"), "CE": ("CE", "loss_ce"),
         "R": ("BN loss R (first BN x10)", "loss_r_bn_feature"), "total": ("total loss", "loss"),
         "grad": ("gradient on u", "uni_perb.grad")}
LAST_STEP_NOTE = ("the reference saves X + u from before its last Adam step (best_inputs = the last iteration's "
                  "`inputs`, computed before optimizer.step()); ddbench decodes X + u after it. The difference is "
                  "the reference's own last update, of the order of its lr, lr·(1 + cos(π(T−1)/T))/2 = {lr_last:.1e} "
                  "with T = {t} (measured {last:.1e}); at the reference's T = 1000 that lr is 6e-7.")


def budget_rows(report: Report, ref: Path) -> None:
    """ddbench's real_groups beside the reference's `args.ipc_init = int(args.ipc/(args.M/args.num_class + 1))`
    (its __main__ block) for every ipc ≤ 500, C in {10, 100, 200, 1000} and M in 1..4."""
    code = extract(ref / "ufc_generation" / "ufc_cifar.py", "args.ipc_init = ", "args.ipc_init = ")
    differ = []
    for classes in (10, 100, 200, 1000):
        for teachers in (1, 2, 3, 4):
            for ipc in range(1, 501):
                ns = {"args": SimpleNamespace(ipc=ipc, M=teachers, num_class=classes)}
                exec(code, ns)
                try:
                    ours = real_groups(ipc, classes, teachers)
                except DDBenchError:  # ipc_init = 0: ddbench refuses (or stores real images, small_ipc=real)
                    ours = 0
                if ours != ns["args"].ipc_init:
                    differ.append((classes, teachers, ipc, ours, ns["args"].ipc_init))
    in_use = [d for d in differ if d[1] >= 3]  # the reference's settings: M = 4 (CIFAR), 3 (ImageNet)
    differ = [d for d in differ if d[1] < 3]
    example = differ[0] if differ else None
    report.same("ipc_init = floor(IPC / (1 + M/C)), M = 3, 4", not in_use, f"{len(in_use)} of 4000 cases differ")
    report.same("ipc_init, M = 1, 2", not differ, f"{len(differ)} of 4000 cases differ", note=(
        f"the reference divides in floating point, int(ipc/(M/C + 1)), which lands just below an exact integer in "
        f"these cases (e.g. C={example[0]}, M={example[1]}, ipc={example[2]}: ddbench {example[3]}, reference "
        f"{example[4]}); ddbench computes floor(ipc·C/(C + M)) in integers. No reference setting (M = 3, 4) is "
        f"affected." if example else ""))


def compare_teacher(report: Report, name: str, member: nn.Module, real: torch.Tensor, runs: dict, cfg: SimpleNamespace,
                    utils: types.ModuleType, gen: torch.Generator) -> torch.Tensor:
    """Every piece of teacher `name` beside the reference's runs {records, after, saved, records64} for it;
    returns ddbench's UFCs after all steps, [G,C,H,W]."""
    g = real.shape[1]
    groups = real.transpose(0, 1).contiguous()  # [G,K,C,H,W]: group k = image k of every class, as INFER.distill
    records = runs["records"]
    ours = step_pieces(member, groups, records, cfg.r_bn)
    member64 = copy.deepcopy(member).double()
    ours64 = step_pieces(member64, groups[:1].double(), runs["records64"], cfg.r_bn)
    for key, (piece, ref_key) in NAMES.items():
        if key != "grad":
            report.close(f"{name}: {piece}", ours[key], stack_steps(records, ref_key))
    gradient_rows(report, f"{name}: gradient on u", ours["grad"], stack_steps(records, "uni_perb.grad"),
                  ours64["grad"], stack_steps(runs["records64"], "uni_perb.grad"),
                  lambda t: step_pieces(member64, groups.double(), [[group[t]] for group in records],  # float64 at
                                        cfg.r_bn)["grad"][0])  # the reference's float32 u_t

    bn = BNStatLoss(member, cfg.first_bn_multiplier)
    u, iterates = torch.zeros(g, 1, 3, SIZE, SIZE), []
    optimise(u, lambda p: groups + p, torch.arange(K).expand(g, K), member, bn, iterations=cfg.iteration, lr=cfg.lr,
             r_bn=cfg.r_bn, augment=ReplayAugment(draws_of(records)), generator=gen,
             progress=lambda _: iterates.append(u.detach().clone()))
    bn.remove()
    u_ref = stack_steps(runs["after"], "uni_perb")  # [T,G,1,C,H,W] after each step
    first_step_rows(report, name, iterates[0], u_ref[0], ours["grad"][0], stack_steps(records, "uni_perb.grad")[0],
                    cfg.lr)
    report.close(f"{name}: u after {cfg.iteration} steps", u, u_ref[-1], note=DRIFT_NOTE)

    low, high = pixel_bounds(*CIFAR10, u.device)
    before_last = stack_steps(records, "uni_perb")[-1]  # u_(T-1): what the reference's saved image holds
    decoded = materialise_ufc(real.reshape(K * g, 3, SIZE, SIZE), before_last, low, high)  # u [G,1,...]
    decoded = decoded.view(K, 2, g, 3, SIZE, SIZE)[:, 1].transpose(0, 1)  # the composites, [G,K,C,H,W]
    report.close(f"{name}: decode X + u, clipped (at the reference's saved u)",
                 utils.denormalize_image(decoded.flatten(0, 1).clone(), "cifar10"),
                 torch.stack(runs["saved"]).flatten(0, 1))
    last = float((u_ref[-1] - before_last).abs().max())
    report.value(f"{name}: saved u_(T-1) vs decoded u_T", last, last / float(before_last.abs().max()),
                 note=LAST_STEP_NOTE.format(last=last, t=cfg.iteration,
                                            lr_last=cosine_lr(cfg.lr, cfg.iteration - 1, cfg.iteration)))
    return u[:, 0]


def compare_static_labels(report: Report, ref: Path, members: list[nn.Module], train_set: torch.Tensor,
                          per_class: int, modules: dict, folder: Path, cfg: SimpleNamespace) -> Edits:
    """INFER's static labels beside val_static.py's block (its model loading from folder/pretrained and the
    mean of the 4 teachers' logits over its trainloader, here the materialised training set)."""
    names = ["resnet18_cifar", "mobilenetv2_cifar", "efficientnet_b0_cifar", "shufflenet (reference)"]
    ours = INFER.labels_of(SimpleNamespace(opts=SimpleNamespace(labels="static")), train_set, Teacher(members, names),
                           per_class)
    edits = Edits()
    code = extract(ref / "ufc_validation" / "val_static.py", "dataset_models = {",
                   "all_indices = torch.cat(all_indices", edits)
    loader = DataLoader(TensorDataset(train_set, torch.zeros(len(train_set)), torch.arange(len(train_set))),
                        batch_size=64)
    ns = {"torch": torch, "torchvision": torchvision, "nn": nn, "args": cfg, "device": "cpu", "print": quiet,
          "trainloader": loader, **{n: getattr(mod, n) for mod in modules.values() for n in dir(mod)
                                    if n.endswith(("_cifar10", "_cifar100"))}}
    with contextlib.chdir(folder):
        exec(code, ns)
    report.close("static labels (mean of the 4 teachers' logits)", ours, ns["all_soft_labels"])
    return edits


def main() -> int:
    args, report = start(__doc__, "zhangxin-xd/UFC", "ufc_generation/ufc_cifar.py",
                         "INFER (UFC): ddbench.methods.infer vs the reference", {
                             "--ipc": (3, "IPC (3: ipc_init = 2 real groups)"), "--iterations": (3, "UFC steps"),
                             "--iterations64": (1, "steps of the float64 run")})
    gen = torch.Generator().manual_seed(args.seed)
    g = real_groups(args.ipc, K, M)
    budget_rows(report, args.reference)
    images, _ = digits(K, max(g, 4), SIZE, 3, *CIFAR10, seed=args.seed)
    ours = [prime_batchnorm(create_model(name, 3, K, SIZE), images, gen).requires_grad_(False) for name in OURS]
    real = images.view(K, -1, 3, SIZE, SIZE)[:, :g]  # [K,G,C,H,W]
    cfg = SimpleNamespace(dataset="cifar10", num_class=K, M=M, ipc_init=g, init_path="init", batch_size=100,
                          iteration=args.iterations, lr=0.25, jitter=4, r_bn=1.0, first_bn_multiplier=10.0,
                          store_best_images=True, syn_data_path="syn")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        modules, shuffle = reference_teachers(args.reference, ours, gen, images, folder)
        members = ours + [shuffle]
        (folder / "init").mkdir()
        for k in range(g):  # the reference's init tensors: one real image per class, class order
            torch.save(real[:, k].clone(), folder / "init" / f"tensor_{k}.pt")
        records, after, saved, edits = run_reference(args.reference, modules, folder, cfg, list(range(g)))
        records64, _, _, edits64 = run_reference(args.reference, modules, folder,  # float64: the first group only
                                                 SimpleNamespace(**{**vars(cfg), "iteration": args.iterations64}),
                                                 [0], torch.float64)
        ufc = torch.zeros(g, M, 3, SIZE, SIZE)
        for m, (member, name) in enumerate(zip(members, TEACHER_NAMES)):
            runs = {"records": records[m], "after": after[m], "saved": saved[m], "records64": records64[m]}
            ufc[:, m] = compare_teacher(report, name, member, real, runs, cfg, modules["utils"], gen)
        low, high = pixel_bounds(*CIFAR10, ufc.device)
        train_set = materialise_ufc(real.reshape(K * g, 3, SIZE, SIZE), ufc, low, high)
        edits_static = compare_static_labels(report, args.reference, members, train_set, g * (M + 1), modules,
                                             folder, cfg)
    return report.print([edits, edits64, edits_static], args.json)


if __name__ == "__main__":
    sys.exit(main())
