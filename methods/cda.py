"""CDA (Yin & Shen, TMLR 2024) on SRe2L: squeeze → curriculum recover → relabel.

Squeeze: a BatchNorm teacher trained by ddbench on the full real train split (cached, see methods/teachers.py).
Recover: images x ~ N(0,1) in the normalised space, one group per (ipc_id, class batch) of `class_batch`
classes with one image each; every iteration a per-group curriculum RandomResizedCrop + flip and roll jitter,
loss CE + r_bn·(BN-statistics loss, first BN ×10), Adam (0.5, 0.9) with a cosine lr, clamp to the valid pixel
range, last iterate kept. All groups run in one batched forward (methods/recover.py), chunked by
`groups_per_step` when memory is short. Relabel happens in the evaluation protocol (eval=cda: an online
teacher); the artifact stores hard labels and float images (no JPEG round-trip, unlike the reference).
SRe2L: crop=fixed (scale (0.08, 1)) or crop=none (roll jitter only, its CIFAR setting).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.recover import BNStatLoss, RecoverAugment, optimise, pixel_bounds
from ddbench.methods.teachers import teacher_config
from ddbench.training import load_teacher
from ddbench.utils import DDBenchError

STORAGE_NOTE = "float32 tensors in the normalised space (no uint8/JPEG round-trip, unlike the reference)"


def augment_options(method: Method) -> RecoverAugment:
    return RecoverAugment(
        crop=str(method.option("crop", "cosine")), milestone=float(method.option("milestone", 1.0)),
        min_scale=float(method.option("min_scale", 0.08)), flip=bool(method.option("flip", True)),
        jitter=int(method.option("jitter", 4)), symmetric_jitter=bool(method.option("symmetric_jitter", False)),
    )


def chunks(total: int, size: int | None) -> list[slice]:
    size = total if not size else int(size)
    if size < 1:
        raise DDBenchError(f"method.groups_per_step must be >= 1 or null (all groups at once), got {size}.")
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


@register_method("cda")
class CDA(Method):
    def distill(self) -> DistillResult:
        info = self.info
        k = info.num_classes
        batch = min(int(self.option("class_batch", 100)), k)
        if batch < 1 or k % batch:
            raise DDBenchError(f"method.class_batch={batch} must divide the {k} classes (e.g. {k} or 100 for 200 "
                               "classes); each group optimises one image of `class_batch` classes.")
        iterations = int(self.option("iterations", 1000))
        if iterations < 0:
            raise DDBenchError(f"method.iterations must be >= 0, got {iterations}.")
        augment = augment_options(self)
        cfg = teacher_config(self.option("teacher"), info)
        teacher = load_teacher(cfg, self.splits, self.device, self.cache, bool(self.option("progress", False)))
        model = teacher.members[0]
        bn = BNStatLoss(model, float(self.option("first_bn_multiplier", 10.0)))
        groups = self.ipc * (k // batch)
        x = torch.randn((groups, batch, *info.shape), device=self.device, generator=self.generator)
        labels = torch.arange(k, device=self.device).view(1, k // batch, batch).expand(self.ipc, -1, -1)
        labels = labels.reshape(groups, batch)
        bounds = pixel_bounds(info.mean, info.std, self.device) if self.splits.zca is None else None
        losses = []
        parts = chunks(groups, self.option("groups_per_step"))
        bar = tqdm(total=iterations * len(parts), desc="cda recover", disable=not self.option("progress", False))
        for part in parts:
            xs = x[part].clone()
            losses.append(optimise(
                xs, lambda p: p, labels[part], model, bn, iterations=iterations,
                lr=float(self.option("lr", 0.25)), r_bn=float(self.option("r_bn", 0.01)), augment=augment,
                generator=self.generator, bounds=bounds, progress=lambda _: bar.update(1)))
            x[part] = xs.detach()
        bar.close()
        bn.remove()
        images = x.view(self.ipc, k, *info.shape).transpose(0, 1).reshape(k * self.ipc, *info.shape)
        meta = {"storage": STORAGE_NOTE, "teacher": cfg.models, "final_loss": float(torch.cat(losses).mean())}
        return DistillResult(images, self.hard_labels(), meta=meta)
