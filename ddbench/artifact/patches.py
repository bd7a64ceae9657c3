"""Patch-dropped images: a keep mask on a patch grid, the deterministic fill of the dropped patches, and the
stored-bytes count of what is kept.

An artifact with ``meta["decode"]["kind"] == "patch_fill"`` stores the decoded images (ready to train on) plus a
uint8 keep mask [N, H/patch, W/patch] as the extra tensor ``meta["decode"]["mask"]``. Only the kept patches are
information: the dropped pixels are a function of the kept ones, ``images == fill_dropped(images * keep, keep)``,
which `check_patch_fill` verifies. stored_bytes counts the kept pixels (float32), one bit per grid cell of the
mask, and the labels.

The `ppca` fill is a learned reconstruction (the offline stand-in for DQ's MAE): a probabilistic PCA of the train
set's pixels, x ~ N(μ, W Wᵀ + σ² I), and every image's dropped pixels are their posterior mean given its kept ones.
Its decoder (μ [D], W [D, r], σ²) is stored with the artifact and, like DQ's MAE weights, not in stored_bytes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ddbench.utils import DDBenchError

FILLS = ("mean", "blur", "ppca")
PRIOR_MEAN, PRIOR_BASIS, PRIOR_NOISE = "pixel_prior_mean", "pixel_prior_basis", "pixel_prior_noise"
PRIOR_NAMES = (PRIOR_MEAN, PRIOR_BASIS, PRIOR_NOISE)  # the ppca decoder's tensors, stored as artifact extras


def fit_pixel_prior(images: torch.Tensor, rank: int, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Probabilistic PCA of images [N, C, H, W] (maximum likelihood): mean [D], basis W [D, r] with
    W Wᵀ + σ² I the covariance model, σ² = the mean discarded eigenvalue []; returned under PRIOR_NAMES."""
    flat = images.flatten(1).double()
    n, dim = flat.shape
    rank = max(1, min(rank, dim - 1, n - 1))
    mean = flat.mean(0)
    cov = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    for i in range(0, n, chunk):
        centred = flat[i:i + chunk] - mean
        cov += centred.T @ centred
    values, vectors = torch.linalg.eigh(cov / max(n - 1, 1))  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    noise = values[rank:].clamp_min(0).mean().clamp_min(1e-6 * values[0].clamp_min(1e-12))
    basis = vectors[:, :rank] * (values[:rank] - noise).clamp_min(0).sqrt()
    return {PRIOR_MEAN: mean.float(), PRIOR_BASIS: basis.float(), PRIOR_NOISE: noise.float().reshape(())}


def ppca_fill(images: torch.Tensor, known: torch.Tensor, prior: dict[str, torch.Tensor], chunk: int = 64) -> torch.Tensor:
    """Posterior mean of every pixel given the known ones: images, known [N, C, H, W] (known: 1 = kept) →
    x̂ = μ + W (Wₖᵀ Wₖ + σ² I)⁻¹ Wₖᵀ (xₖ − μₖ), per image (one r×r solve each, float64)."""
    mean, basis = prior[PRIOR_MEAN].double(), prior[PRIOR_BASIS].double()
    noise = float(prior[PRIOR_NOISE])
    x, m = images.flatten(1).double(), known.expand_as(images).flatten(1).double()
    if x.shape[1] != mean.numel():
        raise DDBenchError(f"the pixel prior has {mean.numel()} pixels but the images have {x.shape[1]}; "
                           "fit it on images of this shape.")
    eye = torch.eye(basis.shape[1], dtype=torch.float64, device=x.device)
    out = []
    for i in range(0, len(x), chunk):  # chunks bound the [n, D, r] product of the Gram matrices
        xi, mi = x[i:i + chunk], m[i:i + chunk]
        projected = ((xi - mean) * mi) @ basis  # Wₖᵀ (xₖ − μₖ) [n, r]
        gram = (basis.unsqueeze(0) * mi.unsqueeze(-1)).transpose(1, 2) @ basis  # Wₖᵀ Wₖ [n, r, r]
        latent = torch.linalg.solve(gram + noise * eye, projected.unsqueeze(-1)).squeeze(-1)
        out.append(mean + latent @ basis.T)
    return torch.cat(out).view_as(images).to(images.dtype)


def pixel_mask(keep: torch.Tensor, patch: int) -> torch.Tensor:
    """Grid keep mask [N, gh, gw] → pixel mask [N, 1, gh*patch, gw*patch] (float, 1 = kept)."""
    return keep.float().repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def fill_dropped(images: torch.Tensor, keep: torch.Tensor, patch: int, fill: str = "blur",
                 prior: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Images [N,C,H,W] with the patches where keep [N,gh,gw] is 0 replaced by a fill of the kept pixels.

    mean: the image's per-channel mean over its kept pixels. blur: repeated normalised 3x3 box averages of the
    known pixels grow into the holes (each pass fills the unknown pixels next to known ones), then any pixel
    still unknown gets the mean fill. ppca: the posterior mean under `prior` (fit_pixel_prior of the train set).
    Kept pixels are returned unchanged.
    """
    if fill not in FILLS:
        raise DDBenchError(f"unknown patch fill {fill!r}; valid: {', '.join(FILLS)}.")
    if fill == "ppca" and prior is None:
        raise DDBenchError("the ppca fill needs the pixel prior (fit_pixel_prior of the train set).")
    known = pixel_mask(keep, patch).to(images.dtype)
    if known.shape[-2:] != images.shape[-2:]:
        raise DDBenchError(
            f"patch mask covers {list(known.shape[-2:])} pixels but the images are {list(images.shape[-2:])}; "
            "the patch size must divide the image size."
        )
    visible = images * known
    if fill == "ppca":
        return torch.where(known.bool(), images, ppca_fill(visible, known, prior))
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


def decode_rule(mask_name: str, patch: int, fill: str, stored_bytes: int,
                prior: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The meta["decode"] entry of a patch-dropped artifact (with the ppca decoder's noise and size when given)."""
    rule = {
        "kind": "patch_fill", "mask": mask_name, "patch": patch, "fill": fill, "stored_bytes": stored_bytes,
        "rule": f"images are stored decoded; pixels where the {patch}x{patch}-patch mask '{mask_name}' is 0 equal "
                f"fill_dropped(images * mask, mask, {patch}, '{fill}'"
                + (", prior" if prior is not None else "") + ") (ddbench.artifact.patches); stored_bytes "
                "counts kept float32 pixels, 1 bit per mask cell and the labels",
    }
    if prior is not None:
        rule["prior"] = {"tensors": list(PRIOR_NAMES), "noise": float(prior[PRIOR_NOISE]),
                         "rank": int(prior[PRIOR_BASIS].shape[1]),
                         "decoder_bytes": 4 * (prior[PRIOR_MEAN].numel() + prior[PRIOR_BASIS].numel()),
                         "note": "a probabilistic PCA of the train set's pixels (the decoder, like DQ's MAE "
                                 "weights); stored as extras, not counted in stored_bytes"}
    return rule


def check_patch_fill(images: torch.Tensor, extras: dict[str, torch.Tensor], decode: dict[str, Any]) -> torch.Tensor:
    """Re-decode from the kept patches only; returns the decoded images, raising if they differ from `images`."""
    if decode.get("kind") != "patch_fill" or decode.get("mask") not in extras:
        raise DDBenchError("artifact decode rule is not patch_fill or its mask tensor is missing; save the artifact again.")
    keep, patch = extras[decode["mask"]], int(decode["patch"])
    prior = None
    if "prior" in decode:
        if any(name not in extras for name in PRIOR_NAMES):
            raise DDBenchError("artifact decode rule needs the pixel prior tensors, which are missing; save it again.")
        prior = {name: extras[name] for name in PRIOR_NAMES}
    masked = images * pixel_mask(keep, patch).to(images.dtype)
    decoded = fill_dropped(masked, keep, patch, decode["fill"], prior)
    if not torch.allclose(decoded, images, atol=1e-5):
        raise DDBenchError("artifact images do not match the decode of their kept patches; the artifact is corrupt.")
    return decoded
