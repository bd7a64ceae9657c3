"""Importers: turn a reference-format folder or an ImageFolder into an Artifact.

Accepted layouts (see :func:`detect_layout`):

* ``ddbench``: ``<dir>/tensors.safetensors`` + ``<dir>/meta.json`` (read by :mod:`ddbench.artifact.store`).
* ``reference``: ``<dir>/images_best.pt`` (float [N,C,H,W], normalized or ZCA space), ``<dir>/labels_best.pt``
  (int [N] or float logits [N,K]) and optionally ``<dir>/lr_best.pt`` (a scalar), as written by the
  trajectory-matching repositories. Read with ``torch.load(weights_only=True)`` only; anything that is not
  plain tensors is refused without being run.
* ``imagefolder``: ``<dir>/<class>/*.png|jpg|jpeg`` with class folders sorted by name giving class indices.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddbench.artifact.store import FORMAT_VERSION, META_FILE, TENSORS_FILE, Artifact, read_artifact_dir
from ddbench.data.registry import DatasetInfo, dataset_info
from ddbench.data.zca import ZCA
from ddbench.utils import DDBenchError

REFERENCE_IMAGES = "images_best.pt"
REFERENCE_LABELS = "labels_best.pt"
REFERENCE_LR = "lr_best.pt"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

LAYOUTS_HELP = (
    "accepted layouts: (1) a ddbench artifact directory with tensors.safetensors and meta.json; "
    "(2) a reference-format folder with images_best.pt, labels_best.pt and optionally lr_best.pt; "
    "(3) an ImageFolder <dir>/<class>/*.png|jpg|jpeg (class folders sorted by name)"
)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def detect_layout(path: Path) -> str:
    """'ddbench', 'reference' or 'imagefolder'; DDBenchError listing the accepted layouts otherwise."""
    if not path.exists():
        raise DDBenchError(f"{path} does not exist; {LAYOUTS_HELP}.")
    if not path.is_dir():
        raise DDBenchError(f"{path} is not a directory; {LAYOUTS_HELP}.")
    if (path / TENSORS_FILE).is_file():
        return "ddbench"
    if (path / REFERENCE_IMAGES).is_file():
        return "reference"
    if any(_image_files(d) for d in _class_dirs(path)):
        return "imagefolder"
    raise DDBenchError(f"{path} is not a recognized distilled-set layout; {LAYOUTS_HELP}.")


def import_path(path: str | Path, dataset: str | None = None) -> Artifact:
    """Load whatever layout `path` holds (a file inside an artifact/reference folder means its folder)."""
    path = Path(path)
    if path.is_file() and path.name in (TENSORS_FILE, META_FILE, REFERENCE_IMAGES, REFERENCE_LABELS, REFERENCE_LR):
        path = path.parent
    layout = detect_layout(path)
    if layout == "ddbench":
        artifact = read_artifact_dir(path)
        if dataset is not None and _key(dataset) != _key(artifact.dataset):
            raise DDBenchError(
                f"artifact {path} was distilled from {artifact.dataset!r} but dataset={dataset!r} was given; "
                "drop --dataset or pass the artifact's own dataset."
            )
        return artifact
    if layout == "reference":
        return import_reference(path, dataset)
    return import_imagefolder(path, dataset)


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def _require_dataset(dataset: str | None, path: Path, layout: str) -> DatasetInfo:
    if not dataset:
        raise DDBenchError(
            f"{path} is a {layout} folder, which does not record its dataset; pass dataset=NAME "
            "(--dataset NAME on the command line) so the class count, image shape and normalization are known."
        )
    return dataset_info(dataset)


def _load_error_detail(err: BaseException) -> str:
    """The specific line of a torch.load failure (e.g. the blocked global), without torch's generic advice."""
    skip = ("weights only load failed", "check the documentation", "please file an issue")
    for line in str(err).splitlines():
        line = line.strip()
        if line.lower().startswith("weightsunpickler error:"):
            line = line.split(":", 1)[1].strip()
        if line and not line.lower().startswith(skip):
            return line[:200]
    return type(err).__name__


def _safe_tensor_load(file: Path) -> object:
    """torch.load restricted to tensors and plain containers; anything else is refused, never run."""
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise DDBenchError(
            f"refused to load {file}: it is not a plain tensor file (it references code or objects that a "
            f"weights-only load does not allow, and it was not run). Re-save it with torch.save(tensor.cpu()). "
            f"Detail: {_load_error_detail(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - corrupt zip, truncated file, ...
        raise DDBenchError(
            f"refused to load {file}: it is not a plain tensor file readable with torch.load(weights_only=True). "
            f"Re-save it with torch.save(tensor.cpu()). Detail: {_load_error_detail(err)}"
        ) from None


def _as_tensor(obj: object, file: Path) -> Tensor:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return torch.tensor(float(obj))
    raise DDBenchError(
        f"{file} holds a {type(obj).__name__}, not a tensor; save the tensor itself with torch.save(tensor.cpu())."
    )


def _soft_class_major(images: Tensor, labels: Tensor, num_classes: int, source: Path) -> tuple[Tensor, Tensor, int]:
    """Learned soft labels [N, K] belong to class-major images (N = ipc * K, image i of class i // ipc): the class
    comes from the position, never from the argmax of a label that training may have moved. Nothing is reordered."""
    n = len(images)
    if n == 0 or n % num_classes:
        raise DDBenchError(
            f"{source} holds {n} images with soft labels; learned labels belong to class-major images, so the count "
            f"must be ipc x {num_classes} classes. Check the dataset (--dataset / dataset=) and the files."
        )
    return images.contiguous(), labels.contiguous(), n // num_classes


def _class_major(images: Tensor, labels: Tensor, num_classes: int, source: Path) -> tuple[Tensor, Tensor, int]:
    """Stable-sort images/labels by class; return them with the (equal) per-class count."""
    if labels.is_floating_point():
        return _soft_class_major(images, labels, num_classes, source)
    classes = labels
    counts = torch.bincount(classes, minlength=num_classes)
    if len(counts) > num_classes or int(counts.min()) != int(counts.max()) or int(counts[0]) == 0:
        shown = ", ".join(f"{c}:{int(n)}" for c, n in enumerate(counts.tolist()))
        raise DDBenchError(
            f"{source} does not hold the same number of images for every one of the {num_classes} classes "
            f"(class:count {shown}); a distilled set needs exactly ipc images per class."
        )
    order = torch.argsort(classes, stable=True)
    return images[order].contiguous(), labels[order].contiguous(), int(counts[0])


def _base_meta(info: DatasetInfo, ipc: int, label_type: str, layout: str, source: Path) -> dict:
    return {
        "dataset": info.name,
        "num_classes": info.num_classes,
        "image_shape": list(info.shape),
        "normalization": {"kind": "meanstd", "mean": list(info.mean), "std": list(info.std)},
        "ipc": ipc,
        "method": "imported",
        "label_type": label_type,
        "config": {},
        "seed": None,
        "source": {"layout": layout, "path": str(source)},
        "format_version": FORMAT_VERSION,
    }


def import_reference(path: str | Path, dataset: str | None, zca: ZCA | None = None) -> Artifact:
    """Import images_best.pt / labels_best.pt / lr_best.pt written by the trajectory-matching repos.

    The images are taken to be in the dataset's mean/std space; pass `zca` (the whitening the images
    were made in) when they live in ZCA space, and it is recorded in the artifact's extras.
    """
    path = Path(path)
    info = _require_dataset(dataset, path, "reference-format")
    images = _as_tensor(_safe_tensor_load(path / REFERENCE_IMAGES), path / REFERENCE_IMAGES)
    labels_file = path / REFERENCE_LABELS
    if not labels_file.is_file():
        raise DDBenchError(f"{path} has {REFERENCE_IMAGES} but no {REFERENCE_LABELS}; copy the labels file next to it.")
    labels = _as_tensor(_safe_tensor_load(labels_file), labels_file)
    lr = None
    if (path / REFERENCE_LR).is_file():
        lr = _as_tensor(_safe_tensor_load(path / REFERENCE_LR), path / REFERENCE_LR)
        if lr.numel() != 1:
            raise DDBenchError(f"{path / REFERENCE_LR} holds {lr.numel()} values; expected one learning rate.")
        lr = lr.float().reshape(())

    if images.ndim != 4 or not images.is_floating_point():
        raise DDBenchError(
            f"{path / REFERENCE_IMAGES} holds {images.dtype} of shape {list(images.shape)}; expected float images "
            f"[N,{info.channels},{info.image_size},{info.image_size}] for dataset {info.name!r}."
        )
    if list(images.shape[1:]) != list(info.shape):
        raise DDBenchError(
            f"{path / REFERENCE_IMAGES} images have shape {list(images.shape[1:])} but dataset {info.name!r} has "
            f"{list(info.shape)}; pass the dataset the images were distilled from."
        )
    images = images.float()
    if labels.is_floating_point() and labels.ndim == 2:
        if labels.shape != (len(images), info.num_classes):
            raise DDBenchError(
                f"{labels_file} soft labels have shape {list(labels.shape)}; expected [{len(images)}, {info.num_classes}]."
            )
        labels = labels.float()
    elif labels.ndim == 1 and not labels.is_floating_point() and labels.dtype != torch.bool:
        if len(labels) != len(images):
            raise DDBenchError(f"{labels_file} holds {len(labels)} labels for {len(images)} images; expected one per image.")
        labels = labels.long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise DDBenchError(
                f"{labels_file} labels range over [{int(labels.min())}, {int(labels.max())}] but dataset "
                f"{info.name!r} has classes 0..{info.num_classes - 1}."
            )
    else:
        raise DDBenchError(
            f"{labels_file} holds {labels.dtype} of shape {list(labels.shape)}; expected integer labels [N] "
            "or float logits [N, num_classes]."
        )
    images, labels, ipc = _class_major(images, labels, info.num_classes, path)
    label_type = "soft" if labels.is_floating_point() else "hard"
    meta = _base_meta(info, ipc, label_type, "reference", path)
    extras: dict[str, Tensor] = {}
    if zca is not None:
        meta["normalization"] = {"kind": "zca", "eps": zca.eps, "fitted_on": "train"}
        extras.update({k: v.detach().cpu().float() for k, v in zca.tensors().items()})
    artifact = Artifact(images=images, labels=labels, meta=meta, lr=lr, extras=extras)
    artifact.validate()
    return artifact


def import_imagefolder(path: str | Path, dataset: str | None) -> Artifact:
    """Import `<dir>/<class>/*.png|jpg|jpeg`: pixels to [0,1], resized, channel-converted, mean/std-normalized."""
    from PIL import Image

    path = Path(path)
    info = _require_dataset(dataset, path, "ImageFolder")
    class_dirs = _class_dirs(path)
    if len(class_dirs) != info.num_classes:
        raise DDBenchError(
            f"{path} has {len(class_dirs)} class folders but dataset {info.name!r} has {info.num_classes} classes; "
            "make one folder per class (sorted by name = class index)."
        )
    if info.channels not in (1, 3):
        raise DDBenchError(f"dataset {info.name!r} has {info.channels} channels; ImageFolder import supports 1 or 3.")
    mode = "L" if info.channels == 1 else "RGB"
    size = info.image_size
    images: list[Tensor] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        files = _image_files(folder)
        if not files:
            raise DDBenchError(f"class folder {folder} holds no .png/.jpg/.jpeg images; every class needs ipc images.")
        for file in files:
            try:
                with Image.open(file) as img:
                    img = img.convert(mode)
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.uint8).copy()
            except OSError as err:
                raise DDBenchError(f"could not read image {file} ({err}); remove or replace the file.") from None
            if array.ndim == 2:
                array = array[:, :, None]
            images.append(torch.from_numpy(array).permute(2, 0, 1))
            labels.append(index)
    pixels = torch.stack(images).float().div_(255.0)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    normalized = (pixels - mean) / std
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    normalized, label_tensor, ipc = _class_major(normalized, label_tensor, info.num_classes, path)
    meta = _base_meta(info, ipc, "hard", "imagefolder", path)
    meta["class_folders"] = [d.name for d in class_dirs]
    artifact = Artifact(images=normalized, labels=label_tensor, meta=meta)
    artifact.validate()
    return artifact
