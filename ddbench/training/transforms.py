"""Batch augmentation of the kd trainer, on the device: RandomCrop(pad)+flip per sample, mixup and cutmix.

All randomness comes from a torch.Generator on the data's device (mixing coefficients are pre-drawn on the host
by the trainer from a seed taken off that generator, so the loop never synchronises).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, with parameters drawn per sample.

    x [N,C,H,W] → [N,C,H,W]. The padding is zeros in the (normalized) space x lives in. Output pixel (i, j) of
    sample n is padded[n, :, dy_n + i, dx_n + j] with dy_n, dx_n ~ randint[0, 2*padding], then the row is
    mirrored with probability 0.5.
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, c, h, w)
        x = x.gather(3, cols)
    if flip:
        mirror = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mirror.view(n, 1, 1, 1), x.flip(-1), x)
    return x


def mix_permutation(n_nets: int, batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """[S,B] a random permutation of each network's batch (the partner j of sample i)."""
    return torch.rand(n_nets, batch, device=device, generator=generator).argsort(dim=1)


def take(values: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """values [S,B,...] reordered per network by perm [S,B]."""
    index = perm.view(*perm.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return values.gather(1, index)


def mixup_images(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x [S,B,C,H,W], lam [S], perm [S,B] → lam_s * x_i + (1 - lam_s) * x_perm(i)."""
    lam = lam.view(-1, 1, 1, 1, 1).to(x.dtype)
    return lam * x + (1 - lam) * take(x, perm)


def cutmix_images(
    x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix per network: paste one box of the partner images into every image of the batch.

    lam [S] is the Beta draw; the box has side ratio sqrt(1 - lam) and a uniform centre, clipped at the border.
    Returns (mixed x [S,B,C,H,W], the area-corrected lam [S] = 1 - box area / image area).
    """
    s, _, _, h, w = x.shape
    dev = x.device
    ratio = (1 - lam.to(dev)).clamp(min=0).sqrt()
    cut_h, cut_w = (h * ratio).long(), (w * ratio).long()
    cy = (torch.rand(s, device=dev, generator=generator) * h).long()
    cx = (torch.rand(s, device=dev, generator=generator) * w).long()
    y0, y1 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
    x0, x1 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    inside_y = (ys >= y0[:, None]) & (ys < y1[:, None])  # [S,H]
    inside_x = (xs >= x0[:, None]) & (xs < x1[:, None])  # [S,W]
    box = (inside_y[:, :, None] & inside_x[:, None, :]).view(s, 1, 1, h, w)
    mixed = torch.where(box, take(x, perm), x)
    area = ((y1 - y0) * (x1 - x0)).to(x.dtype)
    return mixed, 1 - area / (h * w)


def mix_targets(targets: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, space: str = "logits",
                temperature: float = 1.0) -> torch.Tensor:
    """Mixed stored targets [S,B,K] for mixed images.

    space 'logits' (INFER's static labels): lam * z_i + (1 - lam) * z_j, the logits themselves interpolated.
    space 'probs': the logits of lam * softmax(z_i / T) + (1 - lam) * softmax(z_j / T), times T (so that
    softmax(result / T) is exactly the mixed distribution).
    """
    lam_ = lam.view(-1, 1, 1).to(targets.dtype)
    partner = take(targets, perm)
    if space == "logits":
        return lam_ * targets + (1 - lam_) * partner
    probs = lam_ * (targets / temperature).softmax(-1) + (1 - lam_) * (partner / temperature).softmax(-1)
    return probs.clamp_min(1e-12).log() * temperature
