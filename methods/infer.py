"""INFER (Zhang et al., ICLR 2025): real images plus Universal Feature Compensators (UFCs).

Budget: with M teachers and C classes, ipc_init = floor(IPC / (1 + M/C)) real groups (one real image per class
each, drawn with the run's seed) and one UFC u[g,m] per (group, teacher): ipc_init·C real + ipc_init·M UFC images
stored (≤ IPC·C). For teacher m all ipc_init UFCs are optimised in one batch [G,C] (G groups of C images, BN
statistics per group): u = 0, Adam (0.25, betas (0.5, 0.9)), cosine lr, roll jitter, loss CE + r_bn·R_m(X_g + u).
As in the reference the teacher sees the unclipped X_g + u; the decoded images are clipped to the pixel range.

The artifact is factorized: real images + UFCs + the decode rule (ddbench.artifact.decode) in meta; the training
set is every real image and every real + UFC combination, ipc_init·(M+1) per class. Labels (static, the
reference's val_static): the mean of the M teachers' logits on each materialised image, stored in the artifact.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ddbench.artifact.decode import materialise_ufc
from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.cda import STORAGE_NOTE
from ddbench.methods.recover import BNStatLoss, RecoverAugment, optimise, pixel_bounds
from ddbench.methods.teachers import teacher_config
from ddbench.training import load_teacher
from ddbench.utils import DDBenchError

LABELS = ("static", "hard")


def real_groups(ipc: int, num_classes: int, num_teachers: int) -> int:
    """ipc_init = floor(IPC / (1 + M/C)) = floor(IPC·C / (C + M)); a clear error when it is 0."""
    groups = ipc * num_classes // (num_classes + num_teachers)
    if groups < 1:
        smallest = -(-(num_classes + num_teachers) // num_classes)
        raise DDBenchError(f"INFER with {num_teachers} teachers and {num_classes} classes leaves no real image at "
                           f"ipc={ipc} "
                           f"(ipc_init = floor(ipc / (1 + {num_teachers}/{num_classes})) = 0); the smallest valid ipc "
                           f"is {smallest}.")
    return groups


@register_method("infer")
class INFER(Method):
    def distill(self) -> DistillResult:
        info, k = self.info, self.info.num_classes
        cfg = teacher_config(self.option("teacher"), info, ensemble=True)
        m = len(cfg.models)
        g = real_groups(self.ipc, k, m)
        labels_kind = str(self.option("labels", "static"))
        iterations = int(self.option("iterations", 1000))
        if labels_kind not in LABELS or iterations < 0:
            raise DDBenchError(f"method.labels must be one of {', '.join(LABELS)} (got {labels_kind!r}) and "
                               f"method.iterations >= 0 (got {iterations}).")
        augment = RecoverAugment(crop="none", jitter=int(self.option("jitter", 4)),
                                 symmetric_jitter=bool(self.option("symmetric_jitter", False)))
        teacher = load_teacher(cfg, self.splits, self.device, self.cache, bool(self.option("progress", False)))
        rows = self.splits.train.sample_per_class(g, self.generator)  # [K,G]
        real = self.splits.train.images[rows.flatten()]  # [K*G,C,H,W] class-major
        groups = real.view(k, g, *info.shape).transpose(0, 1)  # [G,K,C,H,W]: group g = one image per class
        targets = torch.arange(k, device=self.device).expand(g, k)
        ufc = torch.zeros((g, m, *info.shape), device=self.device)
        bar = tqdm(total=iterations * m, desc="infer ufc", disable=not self.option("progress", False))
        losses = []
        for index, member in enumerate(teacher.members):
            bn = BNStatLoss(member, float(self.option("first_bn_multiplier", 10.0)))
            u = torch.zeros((g, 1, *info.shape), device=self.device)
            losses.append(optimise(
                u, lambda p: groups + p, targets, member, bn, iterations=iterations,
                lr=float(self.option("lr", 0.25)), r_bn=float(self.option("r_bn", 1.0)), augment=augment,
                generator=self.generator, progress=lambda _: bar.update(1)))
            bn.remove()
            ufc[:, index] = u[:, 0]
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
        labels = (teacher.logits(train_set) if labels_kind == "static"
                  else torch.arange(k, device=self.device).repeat_interleave(g * (m + 1)))
        meta = {"decode": rule, "storage": STORAGE_NOTE, "stored_images": {"real": g * k, "ufc": g * m},
                "label_kind": labels_kind, "final_loss": float(torch.cat(losses).mean())}
        return DistillResult(real, labels, extras={"ufc": ufc}, meta=meta)
