"""INFER (Zhang et al., ICLR 2025): real images plus Universal Feature Compensators (UFCs).

Budget: with M teachers and C classes, ipc_init = floor(IPC / (1 + M/C)) real groups (one real image per class
each, drawn with the run's seed) and one UFC u[g,m] per (group, teacher): ipc_init·C real + ipc_init·M UFC images
stored (≤ IPC·C). For teacher m all ipc_init UFCs are optimised in one batch [G,C] (G groups of C images, BN
statistics per group): u = 0, Adam (0.25, betas (0.5, 0.9)), cosine lr, roll jitter, loss CE + r_bn·R_m(X_g + u).
As in the reference the teacher sees the unclipped X_g + u; the decoded images are clipped to the pixel range.

The artifact is factorized: real images + UFCs + the decode rule (ddbench.artifact.decode) in meta; the training
set is every real image and every real + UFC combination, ipc_init·(M+1) per class. Labels (static, the
reference's val_static): the mean of the M teachers' logits on each materialised image, stored in the artifact.
meta["teacher"] is the M teachers' resolved TeacherConfig (as a dict), so eval=infer_dyn relabels with them.
INFER has no setting where ipc_init = 0 (IPC 1): small_ipc=real stores ipc real images per class with the
ensemble's labels (no UFC; meta["variant"] says so), small_ipc=error refuses before any teacher is trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddbench.artifact.decode import materialise_ufc
from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.cda import STORAGE_NOTE
from ddbench.methods.options import option
from ddbench.methods.recover import (BNStatLoss, RecoverAugment, RecoverOptions, forward_chunk, optimise,
                                     pixel_bounds)
from ddbench.training import Teacher, TeacherConfig, load_teacher
from ddbench.utils import DDBenchError

log = logging.getLogger(__name__)
LABELS = ("static", "hard")
SMALL_IPC = ("real", "error")


@dataclass
class INFEROptions(RecoverOptions):
    """ufc_cifar.py's CIFAR settings (conf/method/infer.yaml).

    small_ipc: what an ipc too small for one real group plus its UFCs (ipc_init = 0, e.g. IPC 1) does: 'real' =
    the budget rule without UFCs (ipc real images per class, the ensemble's static labels; meta names the variant),
    'error' = refuse with the smallest valid ipc.
    """

    r_bn: float = option(1.0, low=0)
    labels: str = option("static", choices=LABELS)
    small_ipc: str = option("real", choices=SMALL_IPC)


def real_groups(ipc: int, num_classes: int, num_teachers: int) -> int:
    """ipc_init = floor(IPC / (1 + M/C)) = floor(IPC·C / (C + M)); a clear error when it is 0."""
    groups = ipc * num_classes // (num_classes + num_teachers)
    if groups < 1:
        smallest = -(-(num_classes + num_teachers) // num_classes)
        raise DDBenchError(f"INFER with {num_teachers} teachers and {num_classes} classes leaves no real image at "
                           f"ipc={ipc} "
                           f"(ipc_init = floor(ipc / (1 + {num_teachers}/{num_classes})) = 0); the smallest valid ipc "
                           f"is {smallest} (or method.small_ipc=real: real images and static labels, no UFC).")
    return groups


@register_method("infer")
class INFER(Method):
    Options = INFEROptions
    opts: INFEROptions

    def distill(self) -> DistillResult:
        o, info, k = self.opts, self.info, self.info.num_classes
        cfg = o.teacher.resolve(info, ensemble=True)
        m = len(cfg.models)
        if o.small_ipc == "real" and self.ipc * k // (k + m) < 1:
            return self.without_ufc(cfg)
        g = real_groups(self.ipc, k, m)
        augment = RecoverAugment(crop="none", jitter=o.jitter, symmetric_jitter=o.symmetric_jitter)
        teacher = load_teacher(cfg, self.splits, self.device, self.cache, o.progress)
        rows = self.splits.train.sample_per_class(g, self.generator)  # [K,G]
        real = self.splits.train.images[rows.flatten()]  # [K*G,C,H,W] class-major
        groups = real.view(k, g, *info.shape).transpose(0, 1)  # [G,K,C,H,W]: group g = one image per class
        targets = torch.arange(k, device=self.device).expand(g, k)
        ufc = torch.zeros((g, m, *info.shape), device=self.device)
        bar = tqdm(total=o.iterations * m, desc="infer ufc", disable=not o.progress)
        losses = []
        try:
            for index, member in enumerate(teacher.members):
                bn = BNStatLoss(member, o.first_bn_multiplier)
                u = torch.zeros((g, 1, *info.shape), device=self.device)
                try:
                    losses.append(optimise(
                        u, lambda p: groups + p, targets, member, bn, iterations=o.iterations, lr=o.lr, r_bn=o.r_bn,
                        augment=augment, generator=self.generator, progress=lambda _: bar.update(1),
                        guard_every=o.guard_every,
                        chunk=forward_chunk(o.groups_per_forward, k, self.device)))
                finally:
                    bn.remove()
                ufc[:, index] = u[:, 0]
        finally:
            bar.close()
        clamp = None
        if self.splits.zca is None:
            low, high = pixel_bounds(info.mean, info.std, self.device)
            clamp = {"low": low.flatten().tolist(), "high": high.flatten().tolist()}
        rule = {"kind": "real_plus_ufc", "ufc": "ufc", "groups": g, "teachers": list(cfg.models), "clamp": clamp,
                "materialised_per_class": g * (m + 1)}
        low_t = None if clamp is None else torch.tensor(clamp["low"], device=self.device)
        high_t = None if clamp is None else torch.tensor(clamp["high"], device=self.device)
        train_set = materialise_ufc(real, ufc, low_t, high_t)
        meta = {"decode": rule, "storage": STORAGE_NOTE, "stored_images": {"real": g * k, "ufc": g * m},
                "label_kind": o.labels, "final_loss": float(torch.cat(losses).mean()), "teacher": cfg.to_dict()}
        return DistillResult(real, self.labels_of(train_set, teacher, g * (m + 1)), extras={"ufc": ufc}, meta=meta)

    def labels_of(self, images: torch.Tensor, teacher: Teacher | None, per_class: int) -> torch.Tensor:
        """Static labels (the mean of the teachers' logits on `images` [N,C,H,W]) or class-major hard labels."""
        if teacher is not None and self.opts.labels == "static":
            return teacher.logits(images)
        return torch.arange(self.info.num_classes, device=self.device).repeat_interleave(per_class)

    def without_ufc(self, cfg: TeacherConfig) -> DistillResult:
        """small_ipc=real: the budget holds no UFC, so ipc real images per class with the ensemble's labels."""
        log.warning("infer: ipc=%d leaves no room for UFCs with %d teachers and %d classes; storing %d real images "
                    "per class with %s labels (method.small_ipc=real)", self.ipc, len(cfg.models),
                    self.info.num_classes, self.ipc, self.opts.labels)
        images = self.real_init()
        teacher = None
        if self.opts.labels == "static":
            teacher = load_teacher(cfg, self.splits, self.device, self.cache, self.opts.progress)
        meta = {"variant": "no UFC fits the budget (ipc_init = 0): real images + ensemble labels",
                "storage": STORAGE_NOTE, "stored_images": {"real": len(images), "ufc": 0},
                "label_kind": self.opts.labels, "teacher": cfg.to_dict()}
        return DistillResult(images, self.labels_of(images, teacher, self.ipc), meta=meta)
