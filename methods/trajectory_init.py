"""Initial synthetic images and labels of trajectory matching, from real data and the experts' final networks."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ddbench.data import ClassTensors
from ddbench.training import FlatModel

log = logging.getLogger(__name__)


def correct_real_images(model: FlatModel, finals: Tensor, train: ClassTensors, ipc: int,
                        generator: torch.Generator) -> Tensor:
    """Per class, ipc real images in random order that the experts' final networks finals [X,P] classify
    correctly, class-major [ipc*K,C,H,W].

    Expert 0 first; when a class runs out, images correct under the next experts are added; if all experts
    together give fewer than ipc, random remaining images of the class fill the gap (logged).
    """
    device, chosen = train.images.device, []
    for c in range(train.num_classes):
        sl = train.class_slice(c)
        count = sl.stop - sl.start
        order = torch.randperm(count, generator=generator, device=device) + sl.start
        taken = torch.zeros(count, dtype=torch.bool, device=device)
        picks: list[Tensor] = []
        need = ipc
        for e in range(len(finals)):
            if need == 0:
                break
            pred = model.predict(finals[e], train.images[order]).argmax(-1)
            ok = ((pred == c) & ~taken).nonzero().flatten()[:need]
            taken[ok] = True
            picks.append(order[ok])
            need -= len(ok)
        if need > 0:
            log.warning("class %d: only %d images are classified correctly by the experts; %d random ones added",
                        c, ipc - need, need)
            rest = (~taken).nonzero().flatten()[:need]
            picks.append(order[rest])
        chosen.append(torch.cat(picks))
    return train.images[torch.cat(chosen)].clone()


def expert_soft_labels(model: FlatModel, images: Tensor, hard: Tensor, finals: Tensor, mean_of_correct: bool) -> Tensor:
    """Soft labels (float logits [n,K]) of images [n,C,H,W] from the experts' final networks finals [X,P].

    mean_of_correct (correct_real init): per image the mean logit vector over the experts whose prediction is
    the hard label (all experts where none is); else expert 0's logits.
    """
    if not mean_of_correct:
        return model.predict(finals[0], images).float()
    logits = torch.stack([model.predict(t, images) for t in finals])  # [X, n, K]
    right = (logits.argmax(-1) == hard).float()  # [X, n]
    count = right.sum(0)
    mean_right = (logits * right[..., None]).sum(0) / count.clamp_min(1)[:, None]
    soft = torch.where((count > 0)[:, None], mean_right, logits.mean(0))
    log.info("soft labels from %d experts: initial label accuracy %.1f%%", len(finals),
             100 * float((soft.argmax(-1) == hard).float().mean()))
    return soft.float()
