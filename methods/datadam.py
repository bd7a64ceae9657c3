"""DataDAM: attention matching with random networks (Sajedi et al., ICCV 2023).

Each iteration draws a freshly initialised network and matches, per class, (i) the mean spatial attention maps of
the intermediate layers 1..L-1 and (ii) the mean last-layer embedding (linear-kernel MMD) between a real batch and
the synthetic images, both under the same Siamese DSA draw:

    L = s·Σ_{l<L} Σ_c ||mean_{real_c} a_l − mean_{syn_c} a_l||² + s·λ·Σ_c ||mean_{real_c} e − mean_{syn_c} e||²,
    a_l(x) = normalize_L2(vec(Σ_ch |A_l[ch]|^p)),  s = 100.

All classes go through one batched forward pass (per-class means by reshape). Real and synthetic images are
forwarded in two separate passes, so with BatchNorm in train mode each pass normalises with its own batch
statistics, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.dm import VOLATILE_OPTIONS, reinitialize
from ddbench.methods.loopkit import DivergenceGuard, MomentumSGD, image_step_done
from ddbench.methods.options import MethodOptions, option
from ddbench.models import create_model, feature_maps
from ddbench.training import data_fingerprint, layout_digest
from ddbench.training.checkpoint import Checkpointer


def attention_map(activation: torch.Tensor, power: float) -> torch.Tensor:
    """Spatial attention [B, H*W] of a map [B, C, H, W]: Σ_ch |A|^p, flattened, L2-normalised per sample."""
    if power % 2 == 0:  # even p (the paper's 4): |A|^p = (A²)^(p/2), squares instead of abs and a general pow
        powered = activation.square()
        if power != 2:
            powered = powered.pow(power / 2)
    else:
        powered = activation.abs().pow(power)
    return F.normalize(powered.sum(1).flatten(1), dim=1)


def class_means(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-major rows [K*n, ...] → per-class means [K, D] (D = the flattened rest)."""
    return x.reshape(num_classes, -1, x[0].numel()).mean(1)


def matching_statistics(
    maps: list[torch.Tensor], embedding: torch.Tensor, num_classes: int, power: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-class mean attention of every map but the last ([K, H_l*W_l] each) and mean embedding [K, D]."""
    attention = [class_means(attention_map(m, power), num_classes) for m in maps[:-1]]
    return attention, class_means(embedding, num_classes)


def datadam_loss(
    real: tuple[list[torch.Tensor], torch.Tensor],
    syn: tuple[list[torch.Tensor], torch.Tensor],
    task_balance: float,
    scale: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SAM loss, MMD loss), both scaled: s·Σ_l ||Δ attention_l||² and s·λ·||Δ embedding||² (sums over classes)."""
    (real_att, real_emb), (syn_att, syn_emb) = real, syn
    sam = sum(((r - s).pow(2).sum() for r, s in zip(real_att, syn_att)), torch.zeros((), device=real_emb.device))
    mmd = (real_emb - syn_emb).pow(2).sum()
    return scale * sam, scale * task_balance * mmd


@dataclass
class DataDAMOptions(MethodOptions):
    """The paper's hyper-parameter table (conf/method/datadam.yaml)."""

    iterations: int = option(8000, low=1)  # the reference code runs 20000
    batch_real: int = option(64, low=1)
    lr_img: float | None = option(None, positive=True)  # None: 1.0 for IPC <= 50, 10 above
    momentum: float = option(0.5, low=0)
    power: float = option(4.0, positive=True)  # attention p (paper); the reference code uses 1
    task_balance: float = option(0.01, low=0)
    loss_scale: float = option(100.0, positive=True)
    norm: str | None = option("batchnorm", choices=("batchnorm", "instancenorm", "groupnorm", "layernorm", "none"))
    init: str = option("real", choices=("real", "noise"))
    checkpoint_every: int = option(2000, low=0)
    resume: str = "auto"
    guard_every: int = option(100, low=1)


@register_method("datadam")
class DataDAM(Method):
    Options = DataDAMOptions
    opts: DataDAMOptions

    def distill(self) -> DistillResult:
        o = self.opts
        torch.manual_seed(self.seed)  # the random networks come from the global RNG: seed it from the run's seed
        info, train = self.info, self.splits.train
        ipc, n_classes = self.ipc, info.num_classes
        lr_img = o.lr_img if o.lr_img is not None else (1.0 if ipc <= 50 else 10.0)
        model_cfg = dict(self.model_cfg)
        if o.norm is not None and model_cfg["name"].startswith("convnet"):  # default: the code's BatchNorm
            model_cfg["name"], model_cfg["norm"] = "convnet", o.norm  # convnet_bn is convnet with norm=batchnorm
        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        net = create_model(model_cfg["name"], info.channels, n_classes, info.image_size, **kwargs).to(self.device)
        net.train()  # the reference keeps train mode: BatchNorm normalises with each pass's batch statistics
        net.requires_grad_(False)
        feature_maps(net, train.images[:2])  # fails now, with a clear message, for models without maps
        if o.init == "real":
            syn = self.real_init()
        else:
            syn = torch.randn((ipc * n_classes, *info.shape), device=self.device, generator=self.generator)
        optimizer = {"images": MomentumSGD(lr_img, o.momentum)}
        dsa = self.make_augment()
        key = {"method": self.name, "options": {k: v for k, v in o.to_dict().items() if k not in VOLATILE_OPTIONS},
               "model": model_cfg, "layout": layout_digest(model_cfg, info), "augment": self.augment_cfg,
               "ipc": ipc, "seed": self.seed,
               "data": data_fingerprint(self.splits), "device": self.device.type}
        ckpt = Checkpointer(self.cache, key, o.checkpoint_every, o.resume, self.generator, global_rng=True)
        start, _ = ckpt.load({"images": syn}, optimizer, o.iterations)
        guard = DivergenceGuard({"images": syn}, o.guard_every)
        sam = mmd = torch.zeros((), device=self.device)
        for it in tqdm(range(start, o.iterations), desc="datadam", disable=not o.progress, initial=start,
                       total=o.iterations):
            reinitialize(net)
            rows = train.sample_per_class(o.batch_real, self.generator)  # [K, batch_real]
            real = train.images[rows.flatten()]
            x = syn.detach().requires_grad_(True)
            fake = x
            if dsa is not None:  # Siamese: one draw per class, replayed on its real and synthetic images
                draw = dsa.sample(tuple(real.shape), self.generator, groups=n_classes, per_sample=False)
                real, fake = dsa.apply(real, draw), dsa.apply(x, draw)
            with torch.no_grad():
                real_stats = matching_statistics(*net.feature_maps(real, embedding=True), n_classes, o.power)
            syn_stats = matching_statistics(*net.feature_maps(fake, embedding=True), n_classes, o.power)
            sam, mmd = datadam_loss(real_stats, syn_stats, o.task_balance, o.loss_scale)
            (grad,) = torch.autograd.grad(sam + mmd, x)
            optimizer["images"].step(syn, grad)
            image_step_done("datadam", it, o.iterations, syn, self.hard_labels, guard, ckpt, optimizer)
        ckpt.clear()
        meta = {
            "final_loss": float((sam + mmd).detach()), "final_sam_loss": float(sam.detach()),
            "final_mmd_loss": float(mmd.detach()), "network_norm": self._norm_of(net), "attention_power": o.power,
            "task_balance": o.task_balance, "lr_img": lr_img,
        }
        return DistillResult(syn.detach(), self.hard_labels(), meta=meta)

    @staticmethod
    def _norm_of(net: torch.nn.Module) -> str:
        """Which normalisation the random networks use (recorded in the artifact meta)."""
        kinds = set()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                kinds.add("batchnorm")
            elif isinstance(m, torch.nn.GroupNorm):
                kinds.add("instancenorm" if m.num_groups == m.num_channels else "groupnorm")
            elif isinstance(m, torch.nn.LayerNorm):
                kinds.add("layernorm")
        return "+".join(sorted(kinds)) or "none"
