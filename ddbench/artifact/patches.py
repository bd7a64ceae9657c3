"""Patch-dropped images: a keep mask on a patch grid, the deterministic fill of the dropped patches, and the
stored-bytes count of what is kept.

An artifact with ``meta["decode"]["kind"] == "patch_fill"`` stores the decoded images (ready to train on) plus a
uint8 keep mask [N, H/patch, W/patch] as the extra tensor ``meta["decode"]["mask"]``. Only the kept patches are
information: the dropped pixels are a function of the kept ones, ``images == fill_dropped(images * keep, keep)``,
which `check_patch_fill` verifies. stored_bytes counts the kept pixels (float32), one bit per grid cell of the
mask, and the labels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ddbench.utils import DDBenchError

FILLS = ("mean", "blur")


def pixel_mask(keep: torch.Tensor, patch: int) -> torch.Tensor:
    """Grid keep mask [N, gh, gw] → pixel mask [N, 1, gh*patch, gw*patch] (float, 1 = kept)."""
    return keep.float().repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def fill_dropped(images: torch.Tensor, keep: torch.Tensor, patch: int, fill: str = "blur") -> torch.Tensor:
    """Images [N,C,H,W] with the patches where keep [N,gh,gw] is 0 replaced by a fill of the kept pixels.

    mean: the image's per-channel mean over its kept pixels. blur: repeated normalised 3x3 box averages of the
    known pixels grow into the holes (each pass fills the unknown pixels next to known ones), then any pixel
    still unknown gets the mean fill. Kept pixels are returned unchanged.
    """
    if fill not in FILLS:
        raise DDBenchError(f"unknown patch fill {fill!r}; valid: {', '.join(FILLS)}.")
    known = pixel_mask(keep, patch).to(images.dtype)
    if known.shape[-2:] != images.shape[-2:]:
        raise DDBenchError(
            f"patch mask covers {list(known.shape[-2:])} pixels but the images are {list(images.shape[-2:])}; "
            "the patch size must divide the image size."
        )
    visible = images * known
    mean = visible.sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    if fill == "mean":
        return torch.where(known.bool(), images, mean.expand_as(images))
    out, have = visible, known
    for _ in range(max(images.shape[-2:])):
        total = F.avg_pool2d(out, 3, 1, 1, count_include_pad=False)
        weight = F.avg_pool2d(have, 3, 1, 1, count_include_pad=False)
        grow = (weight > 0) & (have == 0)
        out = torch.where(grow, total / weight.clamp_min(1e-12), out)
        have = torch.where(grow, torch.ones_like(have), have)
    filled = torch.where(have.bool(), out, mean.expand_as(images))
    return torch.where(known.bool(), images, filled)


def kept_bytes(keep: torch.Tensor, channels: int, patch: int, labels: torch.Tensor) -> int:
    """Bytes of the information kept: float32 kept pixels + a 1-bit-per-cell mask + the labels."""
    pixels = int(keep.sum()) * channels * patch * patch * 4
    return pixels + math.ceil(keep.numel() / 8) + labels.numel() * labels.element_size()


def decode_rule(mask_name: str, patch: int, fill: str, stored_bytes: int) -> dict[str, Any]:
    """The meta["decode"] entry of a patch-dropped artifact."""
    return {
        "kind": "patch_fill", "mask": mask_name, "patch": patch, "fill": fill, "stored_bytes": stored_bytes,
        "rule": f"images are stored decoded; pixels where the {patch}x{patch}-patch mask '{mask_name}' is 0 equal "
                f"fill_dropped(images * mask, mask, {patch}, '{fill}') (ddbench.artifact.patches); stored_bytes "
                "counts kept float32 pixels, 1 bit per mask cell and the labels",
    }


def check_patch_fill(images: torch.Tensor, extras: dict[str, torch.Tensor], decode: dict[str, Any]) -> torch.Tensor:
    """Re-decode from the kept patches only; returns the decoded images, raising if they differ from `images`."""
    if decode.get("kind") != "patch_fill" or decode.get("mask") not in extras:
        raise DDBenchError("artifact decode rule is not patch_fill or its mask tensor is missing; save the artifact again.")
    keep, patch = extras[decode["mask"]], int(decode["patch"])
    masked = images * pixel_mask(keep, patch).to(images.dtype)
    decoded = fill_dropped(masked, keep, patch, decode["fill"])
    if not torch.allclose(decoded, images, atol=1e-5):
        raise DDBenchError("artifact images do not match the decode of their kept patches; the artifact is corrupt.")
    return decoded
