"""Where the trainer's randomness comes from: data order, augmentation and mixing of S networks per epoch.

SharedDraws: one generator for all networks (evaluation, teachers, embeddings): per epoch one [S,N] order
from rand().argsort(), per step one augmentation call with a group per network.
PerNetworkDraws: one generator per network (experts): per epoch each network's randperm, then each network's
DSA draws for the whole epoch, so a network's training depends on its own generator only, not on which other
networks share its batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ddbench.augment import DSA, DSADraw, DSAParams
from ddbench.training.recipe import TrainRecipe
from ddbench.training.transforms import random_crop_flip
from ddbench.utils import DDBenchError

DRAW_FIELDS = ("brightness", "saturation", "contrast", "crop", "cutout_center", "flip", "scale", "angle")


def make_dsa(recipe: TrainRecipe) -> DSA | None:
    return DSA(recipe.dsa_strategy, DSAParams(**recipe.dsa_ranges)) if recipe.augment == "dsa" else None


class SharedDraws:
    """All networks draw from one generator (see the module docstring)."""

    def __init__(self, recipe: TrainRecipe, generator: torch.Generator, n_nets: int):
        if recipe.augment == "crop_flip" and not recipe.resolved:
            raise DDBenchError("a crop_flip recipe with crop_padding or flip 'auto' reached the trainer; resolve it "
                               "for the dataset first (TrainRecipe.for_data(splits.info)).")
        self.recipe, self.generator, self.n_nets = recipe, generator, n_nets
        self.dsa = make_dsa(recipe)

    def epoch(self, n: int, steps: int, shape: tuple[int, ...]) -> Tensor:
        """Every network's order of the n rows for this epoch: [S, n]."""
        return torch.rand(self.n_nets, n, device=self.generator.device, generator=self.generator).argsort(dim=1)

    def augment(self, x: Tensor, step: int) -> Tensor:
        """x [S,B,C,H,W] → augmented, each network with its own per-sample draws."""
        if self.recipe.augment == "crop_flip":
            return random_crop_flip(x.flatten(0, 1), self.generator, self.recipe.crop_padding, self.recipe.flip).view_as(x)
        if self.dsa is not None:
            return self.dsa(x.flatten(0, 1), self.generator, groups=x.shape[0]).view_as(x)
        return x

    def mixing(self, total_steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Pre-drawn (lam [T,S], use_cutmix [T]) for every step, from a host RNG seeded off the generator."""
        recipe = self.recipe
        seed = int(torch.randint(0, 2**62, (1,), device=self.generator.device, generator=self.generator))
        rng = np.random.default_rng(seed)
        shape = (total_steps, self.n_nets)
        mixup = rng.beta(recipe.mixup, recipe.mixup, shape) if recipe.mixup > 0 else np.ones(shape)
        cutmix = rng.beta(recipe.cutmix, recipe.cutmix, shape) if recipe.cutmix > 0 else np.ones(shape)
        if recipe.mixup > 0 and recipe.cutmix > 0:
            use_cutmix = rng.random(total_steps) < 0.5
        else:
            use_cutmix = np.full(total_steps, recipe.cutmix > 0)
        lam = np.where(use_cutmix[:, None], cutmix, mixup)
        lam = np.where(rng.random(shape) < recipe.mix_prob, lam, 1.0)  # a step that does not mix has lam = 1
        return torch.as_tensor(lam, dtype=torch.float32, device=device), torch.as_tensor(use_cutmix, device=device)


class PerNetworkDraws:
    """Network s draws from generators[s] only (see the module docstring). Supports augment dsa | none."""

    def __init__(self, recipe: TrainRecipe, generators: Sequence[torch.Generator]):
        if recipe.augment == "crop_flip" or recipe.mixing:
            raise DDBenchError("training with one generator per network supports augment dsa or none and no "
                               "mixup/cutmix; pass one generator instead.")
        self.recipe, self.generators = recipe, list(generators)
        self.dsa = make_dsa(recipe)
        self.draws: dict | None = None
        self.batch = recipe.batch_size

    def epoch(self, n: int, steps: int, shape: tuple[int, ...]) -> Tensor:
        device = self.generators[0].device
        order = torch.stack([torch.randperm(n, generator=g, device=device) for g in self.generators])
        if self.dsa is not None:
            self.draws = self._epoch_draws(steps, shape)
        return order

    def _epoch_draws(self, steps: int, shape: tuple[int, ...]) -> dict:
        """Every network's DSA draws for one epoch, laid out [steps, S, batch, ...] so a step's draw is a view."""
        assert self.dsa is not None
        draws = [self.dsa.sample((steps * self.batch, *shape), g, groups=steps, per_sample=True) for g in self.generators]
        out = {}
        for name in DRAW_FIELDS:
            t = torch.stack([getattr(d, name) for d in draws])  # [S, steps*batch, ...]
            out[name] = t.view(len(draws), steps, self.batch, *t.shape[2:]).transpose(0, 1).contiguous()
        out["op"] = torch.stack([d.op for d in draws]).t().contiguous()  # [steps, S]
        out["meta"] = draws[0]
        return out

    def augment(self, x: Tensor, step: int) -> Tensor:
        if self.dsa is None or self.draws is None:
            return x
        s, rows = x.shape[:2]
        first: DSADraw = self.draws["meta"]
        parts = {name: self.draws[name][step, :, :rows].reshape(s * rows, *self.draws[name].shape[3:])
                 for name in DRAW_FIELDS}
        draw = DSADraw(ops=first.ops, op=self.draws["op"][step], groups=s, per_sample=True, batch=s * rows,
                       size=first.size, cutout_size=first.cutout_size, **parts)
        return self.dsa.apply(x.flatten(0, 1), draw).view_as(x)


def make_draws(recipe: TrainRecipe, generator: torch.Generator | Sequence[torch.Generator], n_nets: int):
    """SharedDraws for one generator, PerNetworkDraws for a sequence of n_nets generators."""
    if isinstance(generator, torch.Generator):
        return SharedDraws(recipe, generator, n_nets)
    if len(generator) != n_nets:
        raise DDBenchError(f"train: {len(generator)} generators for {n_nets} networks; pass one or one per network.")
    return PerNetworkDraws(recipe, generator)
