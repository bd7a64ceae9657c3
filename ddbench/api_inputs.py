"""The Python API's checks of a user's own images and labels, all made before anything trains.

Every check raises a one-line DDBenchError that names the problem and the fix. Shapes: images [N,C,H,W] float
(raw pixels in [0,1], or the dataset's normalized / ZCA space with normalized=True), labels [N] int (hard) or
[N,K] float logits (soft), K = the dataset's class count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ddbench.utils import DDBenchError

if TYPE_CHECKING:
    import torch

    from ddbench.data import Splits

PIXEL_SLACK = 1e-6  # pixels this far outside [0,1] (rounding of a conversion) still count as pixels


@dataclass(frozen=True)
class Expected:
    """What the dataset takes: its name, image shape (C, H, W) and class count."""

    dataset: str
    shape: tuple[int, int, int]
    num_classes: int


def expected_for(cfg: dict[str, Any]) -> Expected | None:
    """The image shape and class count of the configured dataset before it loads (dataset.image_size applied);
    None for `imagefolder`, whose shape is known only after reading the folder."""
    from ddbench.data import dataset_info

    data = cfg["dataset"]
    if data["name"] == "imagefolder":
        return None
    info = dataset_info(data["name"])
    size = int(data.get("image_size") or info.image_size)
    return Expected(info.name, (info.channels, size, size), info.num_classes)


def expected_of(splits: "Splits") -> Expected:
    info = splits.info
    return Expected(info.name, tuple(info.shape), info.num_classes)


def as_tensor(value: Any, what: str) -> "torch.Tensor":
    """A torch tensor (on the CPU) of a tensor, numpy array or nested list."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DDBenchError(f"{what} must be a torch tensor or a numpy array, got {type(value).__name__} "
                           f"({err}); convert them with torch.as_tensor.") from None


def check_images(images: "torch.Tensor", expected: Expected, normalized: bool) -> "torch.Tensor":
    """images [N,C,H,W] as float32, checked for shape, finiteness and (unless normalized) the pixel range."""
    shape = list(expected.shape)
    if images.ndim != 4 or list(images.shape[1:]) != shape:
        raise DDBenchError(f"images must have shape [N, {', '.join(map(str, shape))}] for {expected.dataset} "
                           f"([N, C, H, W]), got {list(images.shape)}; {_shape_hint(images, shape)}")
    if images.shape[0] == 0:
        raise DDBenchError("images is empty (N = 0); pass at least one image per class.")
    if not images.is_floating_point():
        raise DDBenchError(f"images must be a float tensor, got {images.dtype}; pass pixels as floats in [0, 1] "
                           "(images.float() / 255 for 0-255 integers).")
    images = images.float()
    if not bool(images.isfinite().all()):
        bad = int((~images.isfinite()).flatten(1).any(1).sum())
        raise DDBenchError(f"images contain NaN or inf ({bad} of {len(images)} images); the synthetic set diverged, "
                           "pass finite images (e.g. torch.nan_to_num or an earlier, finite set).")
    if not normalized:
        low, high = float(images.min()), float(images.max())
        if low < -PIXEL_SLACK or high > 1 + PIXEL_SLACK:
            hint = ("divide 0-255 pixels by 255" if high > 1.5 and low >= 0 else
                    f"pass normalized=True if they are already in {expected.dataset}'s normalized space")
            raise DDBenchError(f"pixel images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; {hint}, "
                               "or clamp them with images.clamp(0, 1).")
        images = images.clamp(0.0, 1.0)
    return images


def _shape_hint(images: "torch.Tensor", shape: list[int]) -> str:
    c, h, w = shape
    if images.ndim == 3 and c == 1 and list(images.shape[1:]) == [h, w]:
        return "add the channel axis with images.unsqueeze(1)."
    if images.ndim == 4 and list(images.shape[1:]) == [h, w, c]:
        return "the images are channels-last: pass images.permute(0, 3, 1, 2)."
    if images.ndim == 4 and images.shape[1] == c:
        return f"resize them to {h}x{w} (torch.nn.functional.interpolate) or pick the dataset they come from."
    return "pass one [C, H, W] image per row, for the dataset they come from (dataset=...)."


def check_labels(labels: "torch.Tensor", n_images: int, expected: Expected) -> "torch.Tensor":
    """Hard labels [N] → int64 in [0, K); soft labels [N, K] → finite float32 logits."""
    import torch

    k = expected.num_classes
    if labels.ndim == 0 or labels.ndim > 2:
        raise DDBenchError(f"labels must be [N] class indices or [N, {k}] logits, got shape {list(labels.shape)}; "
                           "pass one label per image.")
    if labels.shape[0] != n_images:
        raise DDBenchError(f"there are {n_images} images but {labels.shape[0]} labels; pass one label per image "
                           "(in the same order).")
    if labels.ndim == 2:
        if not labels.is_floating_point():
            raise DDBenchError(f"soft labels [N, K] must be float logits, got {labels.dtype}; pass labels.float(), "
                               "or hard labels as [N] class indices.")
        if labels.shape[1] != k:
            raise DDBenchError(f"soft labels have {labels.shape[1]} classes but {expected.dataset} has {k}; pass "
                               f"[N, {k}] logits, or the dataset the images come from (dataset=...).")
        if not bool(labels.isfinite().all()):
            raise DDBenchError("soft labels contain NaN or inf; pass finite logits.")
        return labels.float()
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DDBenchError(f"hard labels must be integer class indices, got {labels.dtype}; pass labels.long(), "
                           f"or soft labels as [N, {k}] logits.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise DDBenchError(f"hard labels must lie in [0, {k - 1}] ({expected.dataset} has {k} classes), got values "
                           f"in [{low}, {high}]; map them to the dataset's class indices.")
    return labels.long()


def check_lr(learned_lr: Any) -> "torch.Tensor | None":
    """The learned learning rate as a 0-d float32 tensor (None stays None); must be finite and > 0."""
    import torch

    if learned_lr is None:
        return None
    try:
        value = float(torch.as_tensor(learned_lr).detach().float().reshape(()))
    except (TypeError, ValueError, RuntimeError):
        raise DDBenchError(f"learned_lr must be one number (or a one-value tensor), got {learned_lr!r:.60}; "
                           "pass e.g. learned_lr=0.01, or None for the protocol's lr.") from None
    if not (math.isfinite(value) and value > 0):
        raise DDBenchError(f"learned_lr is {value}, but it must be a finite number > 0; pass a positive lr, or None "
                           "for the protocol's lr.")
    return torch.tensor(value, dtype=torch.float32)


def to_model_space(images: "torch.Tensor", splits: "Splits") -> "torch.Tensor":
    """Pixels [N,C,H,W] in [0,1] → the space the dataset's splits are in (its mean/std, or the ZCA fitted on its
    train split), computed exactly as the dataset's own images were."""
    import torch

    images = images.to(splits.train.images.device)
    if splits.zca is not None:
        return splits.zca.apply(images)
    mean = torch.tensor(splits.info.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(splits.info.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def seeds_setting(seeds: int | Sequence[int] | None) -> tuple[int, int] | None:
    """(seed_base, num_seeds) of `seeds`: a count (seeds 0..n-1 from the protocol's seed_base) or a run of
    consecutive seeds; None keeps the protocol's seeds."""
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise DDBenchError(f"seeds={seeds} must be a count >= 1 or a list of consecutive seeds, e.g. seeds=3 "
                               "or seeds=[0, 1, 2].")
        return (-1, seeds)  # -1: keep the protocol's seed_base
    listed = list(seeds) if isinstance(seeds, (list, tuple, range)) else None
    if not listed or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in listed):
        raise DDBenchError(f"seeds must be a count or a non-empty list of ints >= 0, got {seeds!r:.60}; e.g. "
                           "seeds=3 or seeds=[0, 1, 2].")
    if listed != list(range(listed[0], listed[0] + len(listed))):
        raise DDBenchError(f"seeds={listed} are not consecutive: the evaluator trains the seeds seed_base .. "
                           "seed_base + num_seeds - 1 together; pass a run such as "
                           f"[{listed[0]}, {listed[0] + 1}, ...] or evaluate the other seeds in another call.")
    return (listed[0], len(listed))
