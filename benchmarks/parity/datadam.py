"""DataDAM parity: ddbench.methods.datadam beside the reference's main_DataDAM.py (DataDistillation/DataDAM).

    python benchmarks/parity/datadam.py --reference /path/to/DataDAM
        # git clone https://github.com/DataDistillation/DataDAM

The reference's loss is the block of one training iteration inside main() (from `loss = torch.tensor(0.0)` to
`out_loss += output_loss`) with the helpers main() defines for it (getActivation, refreshActivations,
delete_hooks, attach_hooks: forward hooks on every ReLU of `net.features`; error: the per-class 'MSE_B'), and its
utils.get_attention, get_network and networks.ConvNet, run from the checkout (edits listed in the output;
`exp=1` of get_attention becomes the power under test). Both sides get:
- the same network: ddbench's ConvNet-3 (width 128, avg-pool) with BatchNorm and with instance norm, copied by
  state_dict order into the reference's ConvNet from its get_network ('ConvNet', which forces BatchNorm, and
  'ConvNetIN'); both in train mode, parameters frozen;
- the same real batch per class (the reference's get_images(c, n) returns it) and the same synthetic images;
- no DSA on either side (its parameters come from different random streams; ddbench's DSA is tested against
  loop references in tests/test_augment.py), so both networks see identical pixels.

Pieces, for attention power p = 1 (the reference code) and p = 4 (the paper), with BatchNorm and instance norm:
the activations of every ReLU for the real and the synthetic pass, the attention maps of layers 1..L-1, the
embedding (the reference's net(x)[0], the flattened last feature map), the attention-matching loss
100·Σ_l Σ_c ||Δ mean attention||², the MMD term 100·λ·Σ_c ||Δ mean embedding||², the total, and its gradient on
the synthetic images (also in float64 on both sides).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import (Edits, copy_weights, default_dtype, digits, extract, extract_function, gradient_rows, import_file,
                    run_edited, start, stub_module)

from ddbench.methods.datadam import attention_map, datadam_loss, matching_statistics
from ddbench.models import create_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
HELPERS = ("getActivation", "refreshActivations", "delete_hooks", "attach_hooks", "error")


def reference_code(ref: Path) -> tuple[SimpleNamespace, list[types.CodeType], list[Edits]]:
    """The reference's utils (edited: get_network calls .cuda()) with its networks module (einops, used only by
    its ViT, stubbed where not installed), and main()'s loss block with its helpers, compiled (the block with
    get_attention's exp=1 → the power under test)."""
    einops = {}
    if importlib.util.find_spec("einops") is None:
        einops = {"einops": stub_module("einops", rearrange=None, repeat=None),
                  "einops.layers": stub_module("einops.layers"),
                  "einops.layers.torch": stub_module("einops.layers.torch", Rearrange=object)}
    networks = import_file(ref / "networks.py", "networks", einops)
    utils_edits, edits = Edits(), Edits(keywords={"exp": "ATTENTION_POWER"})
    utils = SimpleNamespace(**run_edited(ref / "utils.py", utils_edits, modules={"networks": networks, **einops}))
    code = [extract_function(ref / "main_DataDAM.py", name) for name in HELPERS]
    code.append(extract(ref / "main_DataDAM.py", "loss = torch.tensor(0.0)", "out_loss += output_loss", edits))
    return utils, code, [utils_edits, edits]


def reference_loss(utils: SimpleNamespace, code: list[types.CodeType], net: torch.nn.Module, real: torch.Tensor,
                   syn: torch.Tensor, cfg: SimpleNamespace, power: float) -> dict:
    """Run the reference's loss block on real [K*n,...] (class-major) and syn [K*ipc,...]: its namespace after,
    with the gradient of its loss on syn as 'grad'."""
    ns = {"torch": torch, "np": np, "nn": torch.nn, "time": time,
          "get_attention": utils.get_attention, "DiffAugment": utils.DiffAugment, "args": cfg, "net": net,
          "num_classes": cfg.num_classes, "channel": syn.shape[1], "im_size": tuple(syn.shape[-2:]),
          "image_syn": syn, "activations": {}, "ATTENTION_POWER": power,
          "get_images": lambda c, n: real.view(cfg.num_classes, -1, *real.shape[1:])[c, :n]}
    for part in code:
        exec(part, ns)
    ns["grad"] = torch.autograd.grad(ns["loss"], syn)[0]
    return ns


def ours_loss(net: torch.nn.Module, real: torch.Tensor, syn: torch.Tensor, cfg: SimpleNamespace, power: float) -> dict:
    """ddbench's DataDAM loss on the same inputs, as DataDAM.distill computes it (no DSA)."""
    k = cfg.num_classes
    with torch.no_grad():
        real_maps, real_emb = net.feature_maps(real, embedding=True)
        real_stats = matching_statistics(real_maps, real_emb, k, power)
    syn_maps, syn_emb = net.feature_maps(syn, embedding=True)
    sam, mmd = datadam_loss(real_stats, matching_statistics(syn_maps, syn_emb, k, power), cfg.task_balance, 100.0)
    (grad,) = torch.autograd.grad(sam + mmd, syn)
    return {"real_maps": real_maps, "syn_maps": syn_maps, "real_emb": real_emb, "syn_emb": syn_emb, "sam": sam,
            "mmd": mmd, "total": sam + mmd, "grad": grad}


def main() -> int:
    args, report = start(__doc__, "DataDistillation/DataDAM", "main_DataDAM.py",
                         "DataDAM: ddbench.methods.datadam vs the reference", {
                             "--classes": (10, "classes"), "--size": (32, "image size"),
                             "--batch-real": (8, "real images per class"), "--ipc": (2, "synthetic images per class")})
    utils, code, edits = reference_code(args.reference)
    k, size = args.classes, args.size
    images, _ = digits(k, args.batch_real + args.ipc, size, 3, MEAN, STD, seed=args.seed)
    per_class = images.view(k, -1, 3, size, size)
    real = per_class[:, :args.batch_real].reshape(-1, 3, size, size)
    gen = torch.Generator().manual_seed(args.seed)
    syn0 = per_class[:, args.batch_real:].reshape(-1, 3, size, size)
    syn0 = syn0 + 0.3 * torch.randn(syn0.shape, generator=gen)  # real init, already moved by a few steps
    cfg = SimpleNamespace(num_classes=k, batch_real=args.batch_real, ipc=args.ipc, dsa=False, dsa_strategy="none",
                          dsa_param=None, task_balance=0.01)  # the reference's args the block reads
    for norm in ("batchnorm", "instancenorm"):
        ours_net = create_model("convnet", 3, k, size, norm=norm).train().requires_grad_(False)
        with torch.random.fork_rng():  # get_network reseeds torch's global generator from the clock
            ref_net = utils.get_network("ConvNet" if norm == "batchnorm" else "ConvNetIN", 3, k, (size, size))
        copy_weights(ours_net, ref_net)
        ref_net.train().requires_grad_(False)
        for power in (1.0, 4.0):
            label = f"{norm}, p={power:g}"
            nets = (copy.deepcopy(ours_net), copy.deepcopy(ref_net))  # the same BN state for each pair of passes
            ours = ours_loss(nets[0], real, syn0.clone().requires_grad_(True), cfg, power)
            ref = reference_loss(utils, code, nets[1], real, syn0.clone().requires_grad_(True), cfg, power)
            n_att = len(ref["original_model_set_activations"]) - 1
            report.same(f"{label}: layers matched", n_att == len(ours["real_maps"]) - 1,
                        f"attention on {n_att} of {len(ours['real_maps'])} maps")
            for side, ref_side in (("real", "original"), ("syn", "syn")):
                maps, ref_maps = ours[f"{side}_maps"], ref[f"{ref_side}_model_set_activations"]
                report.close(f"{label}: {side} ReLU activations, layers 1-{len(maps)}",
                             torch.cat([a.flatten() for a in maps]), torch.cat([b.flatten() for b in ref_maps]))
                for layer in range(n_att):
                    report.close(f"{label}: {side} attention map, layer {layer + 1}", attention_map(maps[layer], power),
                                 utils.get_attention(ref_maps[layer].detach(), param=1, exp=power, norm="l2"))
                report.close(f"{label}: {side} embedding", ours[f"{side}_emb"],
                             ref["output_real" if side == "real" else "output_syn"])
            report.close(f"{label}: attention loss (SAM)", ours["sam"], ref["mid_loss"])
            report.close(f"{label}: MMD term", ours["mmd"], ref["out_loss"])
            report.close(f"{label}: total loss", ours["total"], ref["loss"])
            with default_dtype(torch.float64):
                nets64 = (copy.deepcopy(ours_net).double(), copy.deepcopy(ref_net).double())
                ours64 = ours_loss(nets64[0], real.double(), syn0.double().requires_grad_(True), cfg, power)
                ref64 = reference_loss(utils, code, nets64[1], real.double(), syn0.double().requires_grad_(True), cfg,
                                       power)
            gradient_rows(report, f"{label}: gradient on the synthetic images", ours["grad"][None], ref["grad"][None],
                          ours64["grad"], ref64["grad"], lambda t: ours64["grad"])  # float64 at the same point
    return report.print(edits, args.json)


if __name__ == "__main__":
    sys.exit(main())
