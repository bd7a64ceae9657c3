"""The kd trainer: S networks in lock-step with SGD/AdamW + cosine, device-side crop/flip/mixup/cutmix, and
hard labels, stored soft logits or an online teacher as targets.

Shapes: the set is images [N,C,H,W] shared by all networks, or [S,N,C,H,W] one set per network (random-subset
baselines); targets likewise [N] / [S,N] int64 hard labels, or [N,K] / [S,N,K] float logits, or None with a
teacher. A teacher relabels each augmented and mixed batch of all networks in one forward ([S*B] images).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddbench.augment import DSA
from ddbench.training.networks import NetworkBatch
from ddbench.training.recipe import TrainRecipe
from ddbench.training.transforms import (
    cutmix_images,
    mix_permutation,
    mix_targets,
    mixup_images,
    random_crop_flip,
    take,
)
from ddbench.utils import DDBenchError

Teacher = Callable[[torch.Tensor], torch.Tensor]


def kd_loss(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = False) -> torch.Tensor:
    """Sum over networks of KL(softmax(target/T) || softmax(student/T)), batch mean per network, × T² if asked.

    student, target: logits [S,B,K] (target logits are constants).
    """
    batch = student.shape[1]
    log_p = (target / temperature).log_softmax(-1)
    log_q = (student / temperature).log_softmax(-1)
    loss = (log_p.exp() * (log_p - log_q)).sum() / batch
    return loss * temperature**2 if t2_scaling else loss


def hard_loss(student: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor | None = None,
              partner: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over networks of the batch-mean cross-entropy; under mixing lam_s·CE(y_i) + (1 − lam_s)·CE(y_j).

    student [S,B,K]; labels, partner [S,B] int64; lam [S].
    """
    s, b, k = student.shape
    ce = F.cross_entropy(student.reshape(s * b, k), labels.reshape(s * b), reduction="none").view(s, b)
    if lam is None:
        return ce.sum() / b
    ce_partner = F.cross_entropy(student.reshape(s * b, k), partner.reshape(s * b), reduction="none").view(s, b)
    lam_ = lam.view(s, 1).to(ce.dtype)
    return (lam_ * ce + (1 - lam_) * ce_partner).sum() / b


def lr_at(recipe: TrainRecipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of optimisation step `step` (0-based) of `total_steps`.

    cosine: lr·0.5·(1 + cos(π·step/total)), a full half cosine that reaches 0 after the last step.
    step: lr × lr_decay_factor from epoch int(epochs·lr_decay_at) on. constant: lr.
    """
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    if recipe.schedule == "step":
        decay_epoch = int(recipe.epochs * recipe.lr_decay_at)
        return recipe.lr * (recipe.lr_decay_factor if step // steps_per_epoch >= decay_epoch else 1.0)
    return recipe.lr


def make_optimizer(recipe: TrainRecipe, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW. Both update elementwise, so stacked seeds train independently."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def _mixing_draws(recipe: TrainRecipe, total_steps: int, n_nets: int, generator: torch.Generator, device: torch.device):
    """Pre-drawn (lam [T,S], use_cutmix [T]) for every step, from a host RNG seeded off `generator`."""
    seed = int(torch.randint(0, 2**62, (1,), device=generator.device, generator=generator))
    rng = np.random.default_rng(seed)
    shape = (total_steps, n_nets)
    mixup = rng.beta(recipe.mixup, recipe.mixup, shape) if recipe.mixup > 0 else np.ones(shape)
    cutmix = rng.beta(recipe.cutmix, recipe.cutmix, shape) if recipe.cutmix > 0 else np.ones(shape)
    if recipe.mixup > 0 and recipe.cutmix > 0:
        use_cutmix = rng.random(total_steps) < 0.5
    else:
        use_cutmix = np.full(total_steps, recipe.cutmix > 0)
    lam = np.where(use_cutmix[:, None], cutmix, mixup)
    lam = np.where(rng.random(shape) < recipe.mix_prob, lam, 1.0)  # a step that does not mix has lam = 1
    return torch.as_tensor(lam, dtype=torch.float32, device=device), torch.as_tensor(use_cutmix, device=device)


def augment_batch(x: torch.Tensor, recipe: TrainRecipe, generator: torch.Generator, dsa: DSA | None) -> torch.Tensor:
    """x [S,B,C,H,W] → augmented, each network with its own per-sample draws."""
    if recipe.augment == "crop_flip":
        return random_crop_flip(x.flatten(0, 1), generator, recipe.crop_padding, recipe.flip).view_as(x)
    if recipe.augment == "dsa" and dsa is not None:
        return dsa(x.flatten(0, 1), generator, groups=x.shape[0]).view_as(x)
    return x


def train_kd(
    nets: NetworkBatch,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    recipe: TrainRecipe,
    generator: torch.Generator,
    teacher: Teacher | None = None,
    progress: bool = False,
) -> None:
    """Train every network of `nets` with `recipe` (see the module docstring for shapes).

    Every network draws its own data order, augmentation and mixing partners each step; the last partial batch
    is kept; no host synchronisation happens inside the loop.
    """
    n_nets = len(nets)
    per_net = images.dim() == 5
    if per_net and images.shape[0] != n_nets:
        raise DDBenchError(f"train_kd: {images.shape[0]} per-network sets for {n_nets} networks.")
    if targets is None and teacher is None:
        raise DDBenchError("train_kd needs targets (hard labels or logits) or a teacher.")
    device = images.device
    n = images.shape[1] if per_net else images.shape[0]
    hard = targets is not None and not targets.is_floating_point()
    steps = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps
    mixing = recipe.mixup > 0 or recipe.cutmix > 0
    lams, use_cutmix = _mixing_draws(recipe, total, n_nets, generator, device) if mixing else (None, None)
    dsa = DSA() if recipe.augment == "dsa" else None
    nets.train(True)
    params = nets.parameters()
    optimizer = make_optimizer(recipe, params, recipe.lr)
    decay_epoch = int(recipe.epochs * recipe.lr_decay_at) if recipe.schedule == "step" else -1
    net_index = torch.arange(n_nets, device=device)[:, None]
    step = 0
    for epoch in tqdm(range(recipe.epochs), desc=f"train {nets.name}", disable=not progress, leave=False):
        if epoch == decay_epoch and recipe.optimizer == "sgd" and epoch > 0:
            optimizer = make_optimizer(recipe, params, recipe.lr)  # reset momentum, as the reference re-creates SGD
        order = torch.rand(n_nets, n, device=device, generator=generator).argsort(dim=1)
        for i in range(steps):
            rows = order[:, i * recipe.batch_size : (i + 1) * recipe.batch_size]  # [S,B]
            x = images[net_index, rows] if per_net else images[rows]
            t = None
            if targets is not None:
                t = targets[net_index, rows] if targets.dim() == (2 if hard else 3) else targets[rows]
            x = augment_batch(x, recipe, generator, dsa)
            lam = perm = None
            if mixing:
                lam = lams[step]
                perm = mix_permutation(n_nets, x.shape[1], device, generator)
                if recipe.cutmix <= 0:
                    x = mixup_images(x, lam, perm)
                elif recipe.mixup <= 0:
                    x, lam = cutmix_images(x, lam, perm, generator)
                else:  # both: this step's pre-drawn coin picks one (selected on the device, no sync)
                    boxed, lam_box = cutmix_images(x, lam, perm, generator)
                    x = torch.where(use_cutmix[step], boxed, mixup_images(x, lam, perm))
                    lam = torch.where(use_cutmix[step], lam_box, lam)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(x.flatten(0, 1)).view(*x.shape[:2], -1)
                loss_targets = t
            elif not hard and mixing:
                loss_targets = mix_targets(t, lam, perm, recipe.mix_space, recipe.temperature)
            else:
                loss_targets = t
            for group in optimizer.param_groups:
                group["lr"] = lr_at(recipe, step, total, steps)
            logits = nets(x)
            if hard and teacher is None:
                loss = hard_loss(logits, t, lam, take(t, perm) if mixing else None)
            else:
                loss = kd_loss(logits, loss_targets, recipe.temperature, recipe.t2_scaling)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
