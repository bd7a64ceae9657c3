"""Exporters: decode an artifact to pixels and write a PNG grid, an ImageFolder or an .npz file."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddbench.artifact.store import Artifact, replace_dir
from ddbench.utils import DDBenchError, atomic_write_bytes, make_parent, share_like_new, write_error


def to_pixels(artifact: Artifact) -> Tensor:
    """The training set's images (a factorized artifact decoded) as raw pixels [N,C,H,W] in [0,1]
    (mean/std undone, or ZCA inverted), clamped."""
    images = artifact.training_set()[0].detach().float().cpu()
    norm = artifact.normalization
    kind = norm.get("kind", "meanstd")
    if kind == "meanstd":
        channels = images.shape[1]
        mean = torch.tensor(norm.get("mean", [0.0] * channels), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(norm.get("std", [1.0] * channels), dtype=torch.float32).view(1, -1, 1, 1)
        if mean.shape[1] not in (1, channels) or std.shape[1] not in (1, channels):
            raise DDBenchError(
                f"meta normalization has {mean.shape[1]} means / {std.shape[1]} stds for {channels}-channel images; "
                "fix meta['normalization']."
            )
        pixels = images * std + mean
    elif kind == "zca":
        if "zca_inverse" not in artifact.extras or "zca_mean" not in artifact.extras:
            raise DDBenchError(
                "the images are in ZCA space but the artifact has no zca_inverse/zca_mean extras; "
                "save the artifact with ZCA.tensors() in its extras to decode it."
            )
        inverse = artifact.extras["zca_inverse"].detach().float().cpu()
        mean = artifact.extras["zca_mean"].detach().float().cpu().flatten()
        pixels = (images.flatten(1) @ inverse + mean).view_as(images)
    else:
        raise DDBenchError(f"unknown normalization kind {kind!r} in meta; expected 'meanstd' or 'zca'.")
    return pixels.clamp_(0.0, 1.0)


def _to_uint8(pixels: Tensor) -> np.ndarray:
    """[N,C,H,W] in [0,1] → uint8 [N,H,W,C]."""
    return (pixels * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil_mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise DDBenchError(f"cannot write {channels}-channel images as PNG; only 1 (gray) or 3 (RGB) channels are supported.")


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    mode = _pil_mode(array.shape[-1])
    image = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def grid_layout(artifact: Artifact, max_per_class: int = 10, max_classes: int = 100) -> tuple[int, int]:
    """(rows, cols) of the PNG grid: one row per class, one column per image, capped."""
    return min(artifact.num_classes, max_classes), min(artifact.ipc, max_per_class)


def export_png_grid(
    artifact: Artifact, path: str | Path, max_per_class: int = 10, max_classes: int = 100, padding: int = 2
) -> Path:
    """One PNG: row c shows the first images of class c (at most `max_per_class` columns, `max_classes` rows).

    Cell (r, j) starts at pixel (padding + r*(H+padding), padding + j*(W+padding)); padding is white.
    """
    path = Path(path)
    artifact.validate()
    rows, cols = grid_layout(artifact, max_per_class, max_classes)
    pixels = _to_uint8(to_pixels(artifact))
    _, h, w, c = pixels.shape
    _pil_mode(c)
    grid = np.full((padding + rows * (h + padding), padding + cols * (w + padding), c), 255, dtype=np.uint8)
    classes = artifact.class_of()
    for r in range(rows):
        members = torch.nonzero(classes == r).flatten().tolist()[:cols]
        for j, index in enumerate(members):
            top, left = padding + r * (h + padding), padding + j * (w + padding)
            grid[top : top + h, left : left + w] = pixels[index]
    return atomic_write_bytes(path, _png_bytes(grid))


_EXPORT_NAME = re.compile(r"^\d{5}$")


def _is_previous_export(folder: Path) -> bool:
    for entry in folder.iterdir():
        if not (entry.is_dir() and _EXPORT_NAME.match(entry.name)):
            return False
        if any(not (f.is_file() and f.suffix == ".png") for f in entry.iterdir()):
            return False
    return True


def export_imagefolder(artifact: Artifact, directory: str | Path) -> Path:
    """Write `<dir>/00000/00000.png ...`: one folder per class index, images in artifact order.

    Soft-label images are exported under their class-major class. The tree is built in a temporary sibling and
    swapped in; an existing directory is replaced only if it is empty or a previous export.
    """
    directory = Path(directory)
    artifact.validate()
    if directory.exists():
        if not directory.is_dir():
            raise DDBenchError(f"{directory} exists and is not a directory; choose another output path.")
        if any(directory.iterdir()) and not _is_previous_export(directory):
            raise DDBenchError(
                f"{directory} is a non-empty directory that is not an ImageFolder export; refusing to replace it. "
                "Choose a new output path or empty it first."
            )
    pixels = _to_uint8(to_pixels(artifact))
    _pil_mode(pixels.shape[-1])
    classes = artifact.class_of().tolist()
    make_parent(directory)
    try:
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    except OSError as err:
        raise write_error(directory, err) from None
    share_like_new(tmp, directory=True)
    try:
        counters: dict[int, int] = {}
        for index, cls in enumerate(classes):
            folder = tmp / f"{int(cls):05d}"
            folder.mkdir(exist_ok=True)
            within = counters.get(cls, 0)
            counters[cls] = within + 1
            (folder / f"{within:05d}.png").write_bytes(_png_bytes(pixels[index]))
        replace_dir(tmp, directory)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(directory, err) from None
        raise
    return directory


def export_npz(artifact: Artifact, path: str | Path) -> Path:
    """Write an .npz with `images`, `labels`, `lr` (if any), the extras, and `meta` as a JSON string.

    Every array is numeric or a unicode string, so `np.load(path)` works without allow_pickle.
    """
    path = Path(path)
    artifact.validate()
    arrays: dict[str, np.ndarray] = {
        "images": artifact.images.detach().float().cpu().numpy(),
        "labels": artifact.labels.detach().cpu().numpy(),
    }
    if artifact.lr is not None:
        arrays["lr"] = artifact.lr.detach().float().cpu().reshape(()).numpy()
    for name, tensor in artifact.extras.items():
        if name == "meta":
            raise DDBenchError("an extra tensor named 'meta' collides with the npz meta entry; rename the extra.")
        tensor = tensor.detach().cpu()
        arrays[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    arrays["meta"] = np.array(json.dumps(artifact.meta, sort_keys=True, default=str))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())
