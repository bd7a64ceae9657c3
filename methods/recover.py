"""The recover kit of teacher-based synthesis (SRe2L/CDA recover, INFER's UFCs), batched over groups.

A *group* is what the reference optimises in one batch: one image per class (CDA: one ipc_id; INFER: one real
group X_k plus its UFC). Here G groups of B images go through the teacher in ONE forward pass, x [G,B,C,H,W],
and everything the reference shares over its batch is kept per group:

* the BatchNorm statistics loss (mean and biased variance of every BN input over the group's B images),
* the RandomResizedCrop box and the flip decision (the reference calls torchvision on the whole 4-D batch),
* the roll-jitter offsets.

The teacher is in eval mode, so its logits are per sample; with the per-group statistics the batched objective
is the sum of the per-group objectives and every group's gradient equals the one-group-at-a-time loop's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.methods.base import DistillDiverged
from ddbench.methods.loopkit import DivergenceGuard
from ddbench.methods.options import MethodOptions, option
from ddbench.methods.teachers import TeacherOptions
from ddbench.utils import DDBenchError

CROP_MODES = ("cosine", "linear", "step", "fixed", "none")


# ------------------------------------------------------------------------------------------------ BN loss


class BNStatLoss:
    """Forward hooks on every BatchNorm2d input of `model`; `value()` is the per-group BN-statistics loss.

    For BN layer l with input a [G*B,C,H,W] seen as G groups: mu_g = mean over (B,H,W), var_g = biased variance,
    R_l[g] = ||var_g − running_var||₂ + ||mu_g − running_mean||₂ (plain L2 norms). value() → [G] with
    R[g] = first_multiplier·R_1[g] + Σ_{l≥2} R_l[g]. Layers listed in `skip` (0-based BN indices) are left out.
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 10.0, skip: tuple[int, ...] = ()):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise DDBenchError(f"{type(model).__name__} has no BatchNorm layers; the recover loss needs a teacher with "
                               "BatchNorm running statistics (e.g. convnet_bn, resnet18_cifar, vgg11_bn).")
        self.weights = [first_multiplier if i == 0 else 1.0 for i in range(len(self.layers))]
        self.skip = set(skip)
        self.groups = 1
        self.terms: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if index in self.skip:
                return
            a = inputs[0].float()
            a = a.reshape(self.groups, a.shape[0] // self.groups, a.shape[1], -1)  # [G,B,C,HW]
            mean = a.mean(dim=(1, 3))  # [G,C]
            var = (a - mean[:, None, :, None]).pow(2).mean(dim=(1, 3))  # [G,C] biased
            term = (var - module.running_var).norm(dim=1) + (mean - module.running_mean).norm(dim=1)
            self.terms.append(self.weights[index] * term)

        return hook

    def start(self, groups: int) -> None:
        """Call before each forward of G groups (the batch must be G·B images, group-major)."""
        self.groups = groups
        self.terms = []

    def value(self) -> torch.Tensor:
        """[G] the loss of each group for the last forward."""
        return torch.stack(self.terms).sum(0)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def recover_loss(teacher: nn.Module, bn: BNStatLoss, x: torch.Tensor, labels: torch.Tensor,
                 r_bn: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-group loss [G]) with loss = Σ_g [CE_g + r_bn·R_g], CE_g the mean cross-entropy of group g.

    x [G,B,C,H,W], labels [G,B] int64. Summing independent group objectives keeps each group's gradient equal
    to the one it gets when optimised alone.
    """
    g, b = labels.shape
    bn.start(g)
    logits = teacher(x.flatten(0, 1))
    ce = F.cross_entropy(logits.float(), labels.flatten(), reduction="none").view(g, b).mean(1)
    per_group = ce + r_bn * bn.value()
    return per_group.sum(), per_group.detach()


# ---------------------------------------------------------------------------------------- augmentation


def min_crop_scale(step: int, total: int, mode: str = "cosine", milestone: float = 1.0,
                   min_scale: float = 0.08, max_scale: float = 1.0) -> float:
    """CDA's curriculum lower bound of the RandomResizedCrop scale at iteration `step` of `total`.

    cosine: min + (max − min)·(1 + cos(π·t / (m·T)))/2 for t < m·T, else min; linear: max → min linearly over
    m·T; step: max until m·T, then min; fixed: min (SRe2L); 'none' is not a crop (callers skip cropping).
    """
    if mode not in CROP_MODES:
        raise DDBenchError(f"method.crop must be one of {', '.join(CROP_MODES)}, got {mode!r}.")
    end = milestone * total
    if mode == "fixed" or step >= end:
        return min_scale
    if mode == "cosine":
        return min_scale + (max_scale - min_scale) * (1 + math.cos(math.pi * step / end)) / 2
    if mode == "linear":
        return max_scale - (max_scale - min_scale) * step / end
    return max_scale  # step mode before the milestone (and 'none', which callers never crop with)


def crop_boxes(groups: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
               ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for `groups` independent draws → boxes [G,4] = (top, left, h, w).

    Ten attempts: area ~ U(scale)·H·W, log-aspect ~ U(log ratio), w = round(sqrt(area·r)), h = round(sqrt(area/r));
    the first attempt that fits is used, the top-left corner uniform over the valid positions; when none fits,
    the centre crop of the image clamped to the ratio range (torchvision's fallback).
    """
    dev = generator.device
    area = height * width
    u = torch.rand(groups, attempts, device=dev, generator=generator)
    target = area * (scale[0] + (scale[1] - scale[0]) * u)
    log_r = torch.rand(groups, attempts, device=dev, generator=generator) * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_r + math.log(ratio[0]))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros_like(fits[:, 0], dtype=torch.long))
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    in_ratio = width / height
    fb_w, fb_h = (width, height)
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    ok = fits.any(1)
    h = torch.where(ok, h, torch.full_like(h, fb_h))
    w = torch.where(ok, w, torch.full_like(w, fb_w))
    top = torch.floor(torch.rand(groups, device=dev, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(groups, device=dev, generator=generator) * (width - w + 1))
    top = torch.where(ok, top, torch.full_like(top, 0) + (height - h) // 2)
    left = torch.where(ok, left, torch.full_like(left, 0) + (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop box g of every image of group g and resize it back to H×W, bilinear, as torchvision's resized_crop.

    x [G,B,C,H,W], boxes [G,4] (top, left, h, w) → [G,B,C,H,W]. Written by hand instead of
    kornia.augmentation.RandomResizedCrop: kornia maps the box's corner pixel centres onto the output's corner
    pixel centres (align_corners=True semantics, ~0.17 max difference on a 16 px image) and samples its boxes
    differently, whereas torchvision crops and then interpolates with align_corners=False. Here output pixel y
    reads crop coordinate clamp((y + 0.5)·h/H − 0.5, 0, h − 1), exactly F.interpolate's source index, through
    grid_sample, so one batched call replays a different box per group (crops never shrink, so torchvision's
    antialias has no effect).
    """
    g, b, c, height, width = x.shape
    dev, dtype = x.device, x.dtype
    top, left, h, w = (boxes[:, i].to(dtype) for i in range(4))
    ys = torch.arange(height, device=dev, dtype=dtype)
    xs = torch.arange(width, device=dev, dtype=dtype)
    src_y = torch.minimum(((ys + 0.5)[None] * h[:, None] / height - 0.5).clamp(min=0), h[:, None] - 1) + top[:, None]
    src_x = torch.minimum(((xs + 0.5)[None] * w[:, None] / width - 0.5).clamp(min=0), w[:, None] - 1) + left[:, None]
    grid_y = (src_y + 0.5) / height * 2 - 1  # [G,H]  grid_sample's align_corners=False coordinates
    grid_x = (src_x + 0.5) / width * 2 - 1  # [G,W]
    grid = torch.stack([grid_x[:, None, :].expand(g, height, width), grid_y[:, :, None].expand(g, height, width)], -1)
    grid = grid.repeat_interleave(b, dim=0)  # [G*B,H,W,2]
    out = F.grid_sample(x.flatten(0, 1), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view_as(x)


def group_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror every image of group g when flips[g] (bool [G]). x [G,B,C,H,W]."""
    return torch.where(flips.view(-1, 1, 1, 1, 1), x.flip(-1), x)


def group_roll(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """torch.roll(x_g, (shifts[g,0], shifts[g,1]), dims=(H,W)) for every group g. x [G,B,C,H,W], shifts [G,2]."""
    g, _, _, height, width = x.shape
    dev = x.device
    rows = (torch.arange(height, device=dev)[None] - shifts[:, :1]) % height  # [G,H]
    cols = (torch.arange(width, device=dev)[None] - shifts[:, 1:]) % width  # [G,W]
    x = x.gather(3, rows.view(g, 1, 1, height, 1).expand(*x.shape[:3], height, width))
    return x.gather(4, cols.view(g, 1, 1, 1, width).expand_as(x))


@dataclass
class AugmentDraw:
    """One iteration's per-group parameters: boxes [G,4] or None, flips [G] bool or None, shifts [G,2]."""

    boxes: torch.Tensor | None
    flips: torch.Tensor | None
    shifts: torch.Tensor

    def select(self, group: int | slice) -> "AugmentDraw":
        """The draw of one group, or of a slice of groups (for replaying the batched draw in chunks)."""
        pick = group if isinstance(group, slice) else slice(group, group + 1)
        return AugmentDraw(None if self.boxes is None else self.boxes[pick],
                           None if self.flips is None else self.flips[pick], self.shifts[pick])


@dataclass
class RecoverAugment:
    """CDA's recover augmentation: curriculum RandomResizedCrop + flip (one box and flip per group), then roll.

    crop: cosine | linear | step | fixed (SRe2L, scale (min_scale, 1)) | none (SRe2L-CIFAR: roll only).
    jitter: roll offsets uniform in {0..jitter} (symmetric=True: {−jitter..jitter}, SRe2L-Tiny).
    """

    crop: str = "cosine"
    milestone: float = 1.0
    min_scale: float = 0.08
    flip: bool = True
    jitter: int = 4
    symmetric_jitter: bool = False

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise DDBenchError(f"method.crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}.")
        if not 0 < self.min_scale <= 1 or self.milestone <= 0 or self.jitter < 0:
            raise DDBenchError("method.min_scale must be in (0, 1], method.milestone > 0 and method.jitter >= 0.")

    def draw(self, groups: int, height: int, width: int, step: int, total: int,
             generator: torch.Generator) -> AugmentDraw:
        dev = generator.device
        boxes = flips = None
        if self.crop != "none":
            low = min_crop_scale(step, total, self.crop, self.milestone, self.min_scale)
            boxes = crop_boxes(groups, height, width, (low, 1.0), generator)
            if self.flip:
                flips = torch.rand(groups, device=dev, generator=generator) < 0.5
        low_shift = -self.jitter if self.symmetric_jitter else 0
        shifts = torch.randint(low_shift, self.jitter + 1, (groups, 2), device=dev, generator=generator)
        return AugmentDraw(boxes, flips, shifts)

    @staticmethod
    def apply(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """x [G,B,C,H,W] → augmented with the draw's per-group parameters."""
        if draw.boxes is not None:
            x = resized_crop(x, draw.boxes)
        if draw.flips is not None:
            x = group_flip(x, draw.flips)
        return group_roll(x, draw.shifts)


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class RecoverOptions(MethodOptions):
    """What CDA and INFER share: the recover loop's settings and the BatchNorm teacher block."""

    iterations: int = option(1000, low=0)
    lr: float = option(0.25, positive=True)
    r_bn: float = option(0.01, low=0)
    first_bn_multiplier: float = option(10.0, low=0)
    jitter: int = option(4, low=0)
    symmetric_jitter: bool = False
    guard_every: int = option(100, low=1)  # steps between divergence checks (one host sync each)
    groups_per_forward: int = option(0, low=0)  # groups per teacher forward within a step; 0 = auto (forward_chunk)
    teacher: TeacherOptions = field(default_factory=TeacherOptions)


CPU_IMAGES_PER_FORWARD = 32  # on a CPU, chunks of about this many images beat one batch of every group and the
# reference's one group at a time (benchmarks/recover_throughput.py: ConvNet-BN 1.2-1.3x faster than one batch,
# VGG-11-BN within 10 %); on a GPU one batch of every group is the fast path


def forward_chunk(setting: int, group_size: int, device: torch.device) -> int | None:
    """Groups per teacher forward for `optimise`: `setting` when > 0; 0 = auto: every group at once (None) on a
    GPU, about CPU_IMAGES_PER_FORWARD images on a CPU (at least one group)."""
    if setting > 0:
        return setting
    if torch.device(device).type != "cpu":
        return None
    return max(1, round(CPU_IMAGES_PER_FORWARD / group_size))


def pixel_bounds(mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel valid range of normalised pixels, [−m/s, (1−m)/s], each [1,C,1,1]."""
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return -m / s, (1 - m) / s


def cosine_lr(lr: float, step: int, total: int) -> float:
    """lr·(1 + cos(π·t/T))/2: the reference's per-step cosine from lr to 0, no warm-up."""
    return 0.5 * lr * (1 + math.cos(math.pi * step / total))


def chunked_backward(x: torch.Tensor, draw: AugmentDraw, labels: torch.Tensor, teacher: nn.Module,
                     bn: BNStatLoss, augment: RecoverAugment, r_bn: float, chunk: int | None) -> torch.Tensor:
    """Backpropagate Σ_g [CE_g + r_bn·R_g] of x [G,B,C,H,W] (augmented by `draw`) into x's graph, `chunk` groups
    per forward (None or ≥ G: all at once); returns the per-group loss [G]. The group objectives are independent
    (the teacher is in eval mode, the BN statistics are per group), so any chunking gives the same gradient."""
    groups = x.shape[0]
    if chunk is None or chunk >= groups:
        loss, last = recover_loss(teacher, bn, augment.apply(x, draw), labels, r_bn)
        loss.backward()
        return last
    leaf = x.detach().requires_grad_(True)
    parts = []
    for start in range(0, groups, chunk):
        pick = slice(start, start + chunk)
        loss, part = recover_loss(teacher, bn, augment.apply(leaf[pick], draw.select(pick)), labels[pick], r_bn)
        loss.backward()
        parts.append(part)
    x.backward(leaf.grad)
    return torch.cat(parts)


def optimise(
    param: torch.Tensor,
    compose: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    teacher: nn.Module,
    bn: BNStatLoss,
    *,
    iterations: int,
    lr: float,
    r_bn: float,
    augment: RecoverAugment,
    generator: torch.Generator,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    guard_every: int = 100,
    chunk: int | None = None,
) -> torch.Tensor:
    """Adam(lr, betas (0.5, 0.9)) with a cosine lr on the leaf `param` for `iterations` steps; returns the
    per-group loss [G] of the last step (zeros when iterations is 0).

    compose(param) → x [G,B,C,H,W] (CDA: the images themselves; INFER: real group + UFC); each step augments x
    with a fresh per-group draw, takes Σ_g [CE_g + r_bn·R_g] and, with `bounds`, clamps param into them in
    place. Adam is elementwise, so the groups are optimised exactly as if each had its own optimiser. `chunk`:
    groups per teacher forward within a step (None = all; see `chunked_backward`); it changes speed and memory,
    not the result (up to float rounding) or the random draws.
    Every `guard_every` steps (one host sync) a non-finite loss or `param` raises DistillDiverged.
    """
    param.requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    last = torch.zeros(labels.shape[0], device=labels.device)
    guard = DivergenceGuard({"param": param}, guard_every)
    for step in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, step, iterations)
        x = compose(param)
        draw = augment.draw(x.shape[0], x.shape[-2], x.shape[-1], step, iterations, generator)
        optimizer.zero_grad(set_to_none=True)
        last = chunked_backward(x, draw, labels, teacher, bn, augment, r_bn, chunk)
        optimizer.step()
        if bounds is not None:
            with torch.no_grad():
                param.copy_(torch.maximum(torch.minimum(param, bounds[1]), bounds[0]))
        guard.update(step, {}, DivergenceGuard.finite(param, last))
        if guard.due(step + 1, iterations) and (bad := guard.first_bad()) is not None:
            raise DistillDiverged(f"the recover loss or the optimised images became NaN/inf at step {bad}; lower "
                                  f"method.lr (now {lr}) or method.r_bn (now {r_bn}). No record is written.")
        if progress is not None:
            progress(step)
    param.requires_grad_(False)
    return last
