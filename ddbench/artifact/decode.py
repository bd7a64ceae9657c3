"""Factorized artifacts: parts that are stored, plus the rule (meta["decode"]) that materialises the training set.

Rule ``real_plus_ufc`` (INFER): ``images`` holds the real images class-major, G per class (row c·G + g);
the extra tensor named by ``ufc`` holds UFCs [G, M, C, H, W] (one per real group g and teacher m). The training set
is, per class c, the G real images followed by clamp(real[c,g] + ufc[g,m], low, high) for m = 0..M−1, g = 0..G−1
(row c·G(M+1) + p·G + g with p = 0 for the real image, p = m + 1 for UFC m). ``clamp`` is the per-channel valid
pixel range [low, high] (null: no clamp, e.g. ZCA space). Labels are stored for the materialised rows.
Decoding is tensor arithmetic only: nothing stored is ever executed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddbench.utils import DDBenchError

KINDS = ("real_plus_ufc",)
AS_STORED = ("patch_fill",)  # rules whose stored images are the training set (ddbench.artifact.patches)


def materialise_ufc(real: Tensor, ufc: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    """real [K*G,C,H,W] class-major, ufc [G,M,C,H,W] → materialised [K*G*(M+1),C,H,W] class-major (see module)."""
    g, m = ufc.shape[:2]
    k = real.shape[0] // g
    base = real.reshape(k, 1, g, *real.shape[1:])  # [K,1,G,C,H,W]
    mixed = base + ufc.transpose(0, 1).unsqueeze(0)  # [K,M,G,C,H,W]
    if low is not None and high is not None:
        mixed = torch.maximum(torch.minimum(mixed, high.view(1, 1, 1, -1, 1, 1)), low.view(1, 1, 1, -1, 1, 1))
    return torch.cat([base, mixed], 1).reshape(k * g * (m + 1), *real.shape[1:])


def check_rule(rule: Any, images: Tensor, extras: dict[str, Tensor], num_classes: int, ipc: int) -> int:
    """Validate a decode rule against the stored tensors; returns the number of materialised images."""
    if not isinstance(rule, dict) or rule.get("kind") not in KINDS:
        kind = rule.get("kind") if isinstance(rule, dict) else rule
        raise DDBenchError(f"artifact meta decode kind {kind!r} is unknown; valid kinds: {', '.join(KINDS + AS_STORED)}.")
    name = rule.get("ufc", "ufc")
    if name not in extras:
        raise DDBenchError(f"artifact decode rule names the tensor {name!r}, which the artifact does not store; "
                           "save the UFCs as an extra tensor of that name.")
    ufc = extras[name]
    g = int(rule.get("groups", -1))
    if ufc.ndim != 5 or ufc.shape[0] != g or list(ufc.shape[2:]) != list(images.shape[1:]):
        raise DDBenchError(f"artifact UFCs have shape {list(ufc.shape)}, expected [groups={g}, M, "
                           f"{', '.join(map(str, images.shape[1:]))}]; store one UFC per (group, teacher).")
    if images.shape[0] != num_classes * g:
        raise DDBenchError(f"a real_plus_ufc artifact stores {images.shape[0]} real images but the rule says "
                           f"{g} groups x {num_classes} classes = {num_classes * g}; fix meta decode.groups.")
    stored = images.shape[0] + g * ufc.shape[1]
    if stored > ipc * num_classes:
        raise DDBenchError(f"the artifact stores {stored} images (real + UFC), more than the budget ipc={ipc} x "
                           f"{num_classes} classes = {ipc * num_classes}.")
    clamp = rule.get("clamp")
    channels = images.shape[1]
    if clamp is not None and (len(clamp.get("low", [])) != channels or len(clamp.get("high", [])) != channels):
        raise DDBenchError("artifact decode clamp must give one low and one high value per channel.")
    return images.shape[0] * (ufc.shape[1] + 1)


def decode(images: Tensor, extras: dict[str, Tensor], rule: dict[str, Any]) -> Tensor:
    """The materialised training images of a factorized artifact (rule already checked)."""
    clamp = rule.get("clamp")
    low = high = None
    if clamp is not None:
        low = torch.tensor(clamp["low"], dtype=images.dtype, device=images.device)
        high = torch.tensor(clamp["high"], dtype=images.dtype, device=images.device)
    return materialise_ufc(images, extras[rule.get("ufc", "ufc")].to(images), low, high)
