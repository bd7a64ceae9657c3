"""Splits held on the device as tensors, sorted class-major, with a per-class index table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ddbench.data.registry import DatasetInfo, dataset_info, dataset_loader
from ddbench.data.zca import ZCA
from ddbench.utils import DDBenchError

log = logging.getLogger(__name__)


@dataclass
class ClassTensors:
    """One split: images [N,C,H,W] (normalized or ZCA space), labels [N] int64, sorted by class.

    Class c occupies rows offsets[c]:offsets[c+1].
    """

    images: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor  # [num_classes + 1] int64, on the CPU

    @classmethod
    def from_unsorted(cls, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "ClassTensors":
        order = torch.argsort(labels, stable=True)
        labels = labels[order]
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        offsets = torch.zeros(num_classes + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        return cls(images[order].contiguous(), labels.contiguous(), offsets)

    @property
    def num_classes(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.labels)

    def class_slice(self, c: int) -> slice:
        return slice(int(self.offsets[c]), int(self.offsets[c + 1]))

    def class_images(self, c: int) -> torch.Tensor:
        return self.images[self.class_slice(c)]

    def sample_per_class(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Row indices [num_classes, n], n distinct rows per class (with replacement only if a class is smaller)."""
        device = generator.device
        counts = self.counts.to(device)
        starts = self.offsets[:-1].to(device)
        if n <= int(self.counts.min()):
            width = int(self.counts.max())
            keys = torch.rand(self.num_classes, width, device=device, generator=generator)
            keys = keys.masked_fill(torch.arange(width, device=device) >= counts[:, None], 2.0)
            within = keys.argsort(dim=1)[:, :n]
        else:
            within = (torch.rand(self.num_classes, n, device=device, generator=generator) * counts[:, None]).long()
        return (starts[:, None] + within).to(self.images.device)

    def to(self, device: torch.device | str) -> "ClassTensors":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def truncate_per_class(self, limit: int) -> "ClassTensors":
        """The first `limit` rows of every class (deterministic; used by smoke runs)."""
        keep = torch.cat([torch.arange(int(s), int(s) + min(limit, int(c))) for s, c in zip(self.offsets[:-1], self.counts)])
        return ClassTensors.from_unsorted(self.images[keep.to(self.images.device)], self.labels[keep.to(self.labels.device)], self.num_classes)


@dataclass
class Splits:
    """A loaded dataset: metadata, train and test splits, and the ZCA fitted on train (if used)."""

    info: DatasetInfo
    train: ClassTensors
    test: ClassTensors
    zca: ZCA | None = None


def default_data_root() -> Path:
    import os

    return Path(os.environ.get("DDBENCH_DATA", "data"))


def load_dataset(
    name: str,
    root: str | Path | None = None,
    device: torch.device | str = "cpu",
    zca: bool = False,
    zca_eps: float = 0.1,
    download: bool = False,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    image_size: int | None = None,
    mirror_safe: bool | None = None,
    skip_bad_files: bool = False,
    cache: str | Path | None = None,
) -> Splits:
    """Load a registered dataset (or `imagefolder` at `root`) normalized with its mean/std, or ZCA-whitened.

    ZCA is fitted on the raw [0,1] training pixels (as the trajectory-matching repos do) and replaces the
    mean/std normalization. mirror_safe: whether a horizontal flip keeps every class (None: the dataset's own
    declaration); crop-and-flip recipes read it (TrainRecipe.for_data).

    Datasets read from image folders (imagefolder, tinyimagenet, imagenette, imagewoof) stop on bad files with
    a DDBenchError naming them, before anything trains; skip_bad_files=True skips them with one warning instead
    (ddbench/data/folders.py says what is checked). Their decoded pixels are cached under `cache` (a cache root;
    None: the default cache), kind "folders", keyed on the file list with sizes and mtimes.
    """
    from ddbench.data.folders import folder_options

    root = Path(root) if root else default_data_root()
    with folder_options(skip_bad=skip_bad_files, cache=cache):
        if name == "imagefolder":
            info, raw = _imagefolder(root, image_size or 32)
        else:
            info = dataset_info(name)
            raw = dataset_loader(name)(root, download)
    train_x, train_y, test_x, test_y = raw
    if image_size and image_size != info.image_size:
        import torch.nn.functional as F

        train_x = F.interpolate(train_x, size=image_size, mode="bilinear", align_corners=False)
        test_x = F.interpolate(test_x, size=image_size, mode="bilinear", align_corners=False)
        info = replace(info, image_size=image_size)
    if mirror_safe is not None:
        info = replace(info, mirror_safe=bool(mirror_safe))
    train = ClassTensors.from_unsorted(train_x, train_y, info.num_classes)
    test = ClassTensors.from_unsorted(test_x, test_y, info.num_classes)
    if max_train_per_class:
        train = train.truncate_per_class(max_train_per_class)
    if max_test_per_class:
        test = test.truncate_per_class(max_test_per_class)
    train, test = train.to(device), test.to(device)
    whitening = None
    if zca:
        whitening = ZCA.fit(train.images, eps=zca_eps)
        train.images, test.images = whitening.apply(train.images), whitening.apply(test.images)
    else:
        mean = torch.tensor(info.mean, device=train.images.device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=train.images.device).view(1, -1, 1, 1)
        train.images = (train.images - mean) / std
        test.images = (test.images - mean) / std
    log.info("loaded %s: %d train / %d test images of shape %s on %s", info.name, len(train), len(test), info.shape, device)
    return Splits(info, train, test, whitening)


def _imagefolder(root: Path, image_size: int):
    """`<root>/train/<class>/*` and `<root>/test (or val)/<class>/*`: channels from the files' majority (1 for an
    all-grayscale folder, else 3), mean/std from the train pixels; options from `folder_options`."""
    from ddbench.data.folders import read_folder_splits

    if not root.exists():
        raise DDBenchError(f"dataset.root={root} does not exist; expected {root}/train/<class>/* and {root}/test/<class>/*.")
    found = read_folder_splits(root / "train", [root / "test", root / "val"], image_size, channels=None)
    raw = found.raw()
    train_x = raw[0]
    info = DatasetInfo(
        "imagefolder", train_x.shape[1], image_size, len(found.classes),
        tuple(train_x.mean(dim=(0, 2, 3)).tolist()), tuple(train_x.std(dim=(0, 2, 3)).tolist()), tuple(found.classes),
    )
    return info, raw
