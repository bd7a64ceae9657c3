"""The one lock-step trainer: S networks trained together on one set with one TrainRecipe, and their accuracy.

Shapes: the set is images [N,C,H,W] shared by all networks, or [S,N,C,H,W] one set per network (random-subset
baselines); targets likewise [N] / [S,N] int64 hard labels, or [N,K] / [S,N,K] float logits, or None with a
teacher. A teacher relabels each augmented and mixed batch of all networks in one forward ([S*B] images).
Networks are a NetworkBatch (modules, vmapped or looped) or FlatNetworks (rows of one [S,P] vector; GSAM).
Every user trains through `train`: the evaluator's protocols, teachers, embedding networks and experts.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ddbench.data import ClassTensors
from ddbench.training.checkpoint import Checkpointer, load_optimizer_tensors, optimizer_tensors
from ddbench.training.draws import make_draws
from ddbench.training.flat import gsam_gradient
from ddbench.training.losses import hard_loss, kd_loss
from ddbench.training.recipe import WARMUP_START, TrainRecipe
from ddbench.training.transforms import cutmix_images, mix_permutation, mix_targets, mixup_images, take
from ddbench.utils import DDBenchError

Teacher = Callable[[torch.Tensor], torch.Tensor]


def lr_at(recipe: TrainRecipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of optimisation step `step` (0-based) of `total_steps`.

    warm-up (recipe.warmup_epochs = E > 0, W = E·steps_per_epoch steps): lr·(s + (1 − s)·step/W) for step < W,
    with s = WARMUP_START, a linear rise to lr; the schedule then runs over the remaining steps (step − W of
    total − W for cosine). cosine: lr·0.5·(1 + cos(π·step/total)), a full half cosine that reaches 0 after the
    last step. step: lr × lr_decay_factor from epoch int(epochs·lr_decay_at) on (epochs counted from the first).
    constant: lr.
    """
    warmup = getattr(recipe, "warmup_epochs", 0) * steps_per_epoch
    if step < warmup:
        return recipe.lr * (WARMUP_START + (1 - WARMUP_START) * step / warmup)
    if recipe.schedule == "cosine":
        if warmup > 0:
            return recipe.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    if recipe.schedule == "step":
        decay_epoch = int(recipe.epochs * recipe.lr_decay_at)
        return recipe.lr * (recipe.lr_decay_factor if step // steps_per_epoch >= decay_epoch else 1.0)
    return recipe.lr


def make_optimizer(recipe: TrainRecipe, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay; also GSAM's step) or AdamW. Both update elementwise, so stacked networks
    train independently."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def momentum_reset_epoch(recipe: TrainRecipe) -> int:
    """The epoch at which the step schedule re-creates SGD (momentum reset, as the reference does); -1 if never."""
    if recipe.schedule != "step" or recipe.lr_decay_factor == 1 or recipe.optimizer == "adamw":
        return -1
    return int(recipe.epochs * recipe.lr_decay_at)


def _check(nets, images: torch.Tensor, targets: torch.Tensor | None, recipe: TrainRecipe, teacher) -> None:
    n_nets = len(nets)
    if images.dim() == 5 and images.shape[0] != n_nets:
        raise DDBenchError(f"train: {images.shape[0]} per-network sets for {n_nets} networks.")
    if targets is None and teacher is None:
        raise DDBenchError("train needs targets (hard labels or logits) or a teacher.")
    if recipe.optimizer == "gsam" and not getattr(nets, "flat", False):
        raise DDBenchError("recipe optimizer 'gsam' needs FlatNetworks (rows of one parameter vector per network).")


def relabel(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    """The teacher's targets [S,B,K] for the networks' augmented batches x [S,B,C,H,W]: `teacher.relabel(x)` when
    it has one (a Teacher: one forward, or one per network's batch with BatchNorm on batch statistics), else one
    call on the flattened [S*B] images."""
    own = getattr(teacher, "relabel", None)
    if own is not None:
        return own(x)
    return teacher(x.flatten(0, 1)).view(*x.shape[:2], -1)


def train(
    nets,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    recipe: TrainRecipe,
    generator: torch.Generator | Sequence[torch.Generator],
    teacher: Teacher | None = None,
    progress: bool = False,
    checkpoint: Checkpointer | None = None,
) -> None:
    """Train every network of `nets` with `recipe` (see the module docstring for shapes).

    generator: one torch.Generator for all networks, or one per network (see ddbench.training.draws).
    Every network draws its own data order, augmentation and mixing partners each step; the last partial
    batch is kept; no host synchronisation happens inside the loop.
    checkpoint: where to save the training state between epochs when due (networks with `state_tensors()`);
    a matching checkpoint is resumed, giving the same networks as an uninterrupted run; removed at the end.
    """
    _check(nets, images, targets, recipe, teacher)
    n_nets, device = len(nets), images.device
    per_net = images.dim() == 5
    n = images.shape[1] if per_net else images.shape[0]
    hard = targets is not None and not targets.is_floating_point()
    steps = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps
    draws = make_draws(recipe, generator, n_nets)
    mixing = recipe.mixing
    lams, use_cutmix = draws.mixing(total, device) if mixing else (None, None)
    nets.train(True)
    params = nets.parameters()
    optimizer = make_optimizer(recipe, params)
    reset_epoch = momentum_reset_epoch(recipe)
    net_index = torch.arange(n_nets, device=device)[:, None]
    end_epoch = getattr(nets, "end_epoch", None)

    def loss_of(logits: torch.Tensor, t, loss_targets, lam, perm) -> torch.Tensor:
        if hard and teacher is None:
            return hard_loss(logits, t, lam, take(t, perm) if mixing else None)
        return kd_loss(logits, loss_targets, recipe.temperature, recipe.t2_scaling)

    start_epoch = 0
    if checkpoint is not None:
        start_epoch, found = checkpoint.load(nets.state_tensors(), None, recipe.epochs)
        if start_epoch:  # the momentum reset, if any, happens in the loop as in an uninterrupted run
            load_optimizer_tensors(optimizer, found)
    step = start_epoch * steps
    for epoch in tqdm(range(start_epoch, recipe.epochs), desc=f"train {nets.name}", disable=not progress,
                      leave=False, initial=start_epoch, total=recipe.epochs):
        if epoch == reset_epoch and epoch > 0:
            optimizer = make_optimizer(recipe, params)
        order = draws.epoch(n, steps, tuple(images.shape[-3:]))
        for i in range(steps):
            rows = order[:, i * recipe.batch_size : (i + 1) * recipe.batch_size]  # [S,B]
            x = images[net_index, rows] if per_net else images[rows]
            t = None
            if targets is not None:
                t = targets[net_index, rows] if targets.dim() == (2 if hard else 3) else targets[rows]
            x = draws.augment(x, i)
            lam = perm = None
            if mixing:
                lam = lams[step]
                perm = mix_permutation(n_nets, x.shape[1], device, draws.generator)
                if recipe.cutmix <= 0:
                    x = mixup_images(x, lam, perm)
                elif recipe.mixup <= 0:
                    x, lam = cutmix_images(x, lam, perm, draws.generator)
                else:  # both: this step's pre-drawn coin picks one (selected on the device, no sync)
                    boxed, lam_box = cutmix_images(x, lam, perm, draws.generator)
                    x = torch.where(use_cutmix[step], boxed, mixup_images(x, lam, perm))
                    lam = torch.where(use_cutmix[step], lam_box, lam)
            loss_targets = t
            if teacher is not None:
                with torch.no_grad():
                    loss_targets = relabel(teacher, x)
            elif not hard and mixing:
                loss_targets = mix_targets(t, lam, perm, recipe.mix_space, recipe.temperature)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(recipe, step, total, steps)
            loss = loss_of(nets(x), t, loss_targets, lam, perm)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.optimizer == "gsam":
                _gsam_direction(nets, x, lambda logits: loss_of(logits, t, loss_targets, lam, perm), recipe)
            optimizer.step()
            step += 1
        if end_epoch is not None:
            end_epoch()
        if checkpoint is not None and checkpoint.due(epoch + 1, recipe.epochs):
            checkpoint.save(epoch + 1, {**nets.state_tensors(), **optimizer_tensors(optimizer)})
    if checkpoint is not None:
        checkpoint.clear()


def _gsam_direction(nets, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], recipe: TrainRecipe) -> None:
    """Replace the gradient of FlatNetworks' [S,P] rows by GSAM's direction on the same batch."""
    (w,) = nets.parameters()

    def grad_at(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(nets.forward_at(v, x)), v)
        return g

    w.grad = gsam_gradient(w.detach(), w.grad, grad_at, recipe.rho, recipe.gsam_alpha, recipe.adaptive)


@torch.no_grad()
def test_accuracy(nets, test: ClassTensors, batch_size: int = 1024) -> torch.Tensor:
    """Top-1 accuracy of every network on the whole split, as fractions [S]."""
    nets.train(False)
    correct = torch.zeros(len(nets), device=test.images.device)
    for start in range(0, len(test), batch_size):
        x = test.images[start : start + batch_size]
        logits = nets(x.unsqueeze(0).expand(len(nets), *x.shape))
        correct += (logits.argmax(-1) == test.labels[start : start + batch_size]).sum(-1)
    return correct / len(test)
