"""CDA (Yin & Shen, TMLR 2024) on SRe2L: squeeze → curriculum recover → relabel.

Squeeze: a BatchNorm teacher trained by ddbench on the full real train split (cached, see methods/teachers.py).
Recover: images x ~ N(0,1) in the normalised space (or real images, init=real), one group per (ipc_id, class batch) of `class_batch`
classes with one image each; every iteration a per-group curriculum RandomResizedCrop + flip and roll jitter,
loss CE + r_bn·(BN-statistics loss, first BN ×10), Adam (0.5, 0.9) with a cosine lr, clamp to the valid pixel
range, last iterate kept. All groups are optimised together (methods/recover.py), their teacher forwards in
chunks of `groups_per_forward` groups (auto: all on a GPU, ~32 images on a CPU; the images do not depend on it);
`groups_per_step` instead optimises parts of the groups one after another. Relabel happens in the evaluation
protocol (eval=cda: an online teacher); the artifact stores hard labels and float images (no JPEG round-trip,
unlike the reference).
SRe2L: crop=fixed (scale (0.08, 1)) or crop=none (roll jitter only, its CIFAR setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.options import option
from ddbench.methods.recover import (CROP_MODES, BNStatLoss, RecoverAugment, RecoverOptions, forward_chunk,
                                     optimise, pixel_bounds)
from ddbench.training import load_teacher
from ddbench.training.recipe import AUTO, data_flip
from ddbench.utils import DDBenchError

STORAGE_NOTE = "float32 tensors in the normalised space (no uint8/JPEG round-trip, unlike the reference)"


@dataclass
class CDAOptions(RecoverOptions):
    """CDA's CIFAR settings (conf/method/cda.yaml)."""

    crop: str = option("cosine", choices=CROP_MODES)
    milestone: float = option(1.0, positive=True)
    min_scale: float = option(0.08, positive=True)
    flip: bool | str = option("auto", choices=(True, False, "auto"))  # auto: the dataset's mirror_safe
    class_batch: int = option(100, low=1)
    groups_per_step: int | None = option(None, low=1)
    init: str = option("noise", choices=("noise", "real"))  # real: random real images of each class, the run's seed

    def check(self, method: str) -> None:
        if self.min_scale > 1:
            raise DDBenchError(f"{method}: method.min_scale must be in (0, 1], got {self.min_scale}.")


def chunks(total: int, size: int | None) -> list[slice]:
    """Slices of at most `size` groups (None: one slice of all)."""
    size = total if not size else int(size)
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


@register_method("cda")
class CDA(Method):
    Options = CDAOptions
    opts: CDAOptions

    def distill(self) -> DistillResult:
        o, info = self.opts, self.info
        k = info.num_classes
        batch = min(o.class_batch, k)
        if k % batch:
            raise DDBenchError(f"method.class_batch={batch} must divide the {k} classes (e.g. {k} or 100 for 200 "
                               "classes); each group optimises one image of `class_batch` classes.")
        flip = data_flip(info) if o.flip == AUTO else o.flip
        augment = RecoverAugment(crop=o.crop, milestone=o.milestone, min_scale=o.min_scale, flip=flip,
                                 jitter=o.jitter, symmetric_jitter=o.symmetric_jitter)
        cfg = o.teacher.resolve(info)
        teacher = load_teacher(cfg, self.splits, self.device, self.cache, o.progress)
        model = teacher.members[0]
        bn = BNStatLoss(model, o.first_bn_multiplier)
        groups = self.ipc * (k // batch)
        if o.init == "real":  # class-major [K*ipc] → [ipc, K] → one image of `batch` classes per group
            real = self.real_init().view(k, self.ipc, *info.shape).transpose(0, 1)
            x = real.reshape(groups, batch, *info.shape).contiguous()
        else:
            x = torch.randn((groups, batch, *info.shape), device=self.device, generator=self.generator)
        labels = torch.arange(k, device=self.device).view(1, k // batch, batch).expand(self.ipc, -1, -1)
        labels = labels.reshape(groups, batch)
        bounds = pixel_bounds(info.mean, info.std, self.device) if self.splits.zca is None else None
        losses = []
        parts = chunks(groups, o.groups_per_step)
        bar = tqdm(total=o.iterations * len(parts), desc="cda recover", disable=not o.progress)
        try:
            for part in parts:
                xs = x[part].clone()
                losses.append(optimise(
                    xs, lambda p: p, labels[part], model, bn, iterations=o.iterations, lr=o.lr, r_bn=o.r_bn,
                    augment=augment, generator=self.generator, bounds=bounds, progress=lambda _: bar.update(1),
                    guard_every=o.guard_every,
                    chunk=forward_chunk(o.groups_per_forward, batch, self.device)))
                x[part] = xs.detach()
        finally:
            bar.close()
            bn.remove()
        images = x.view(self.ipc, k, *info.shape).transpose(0, 1).reshape(k * self.ipc, *info.shape)
        meta = {"storage": STORAGE_NOTE, "teacher": cfg.models, "init": o.init, "final_loss": float(torch.cat(losses).mean())}
        return DistillResult(images, self.hard_labels(), meta=meta)
