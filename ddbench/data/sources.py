"""Built-in datasets. Each loader returns raw pixels in [0,1] as [N,C,H,W] float32 plus int64 labels.

Nothing here downloads unless the user allowed it (`download=true`); missing files raise an error that
names the expected layout and how to get it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddbench.data.registry import DatasetInfo, RawSplits, register_dataset
from ddbench.utils import DDBenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

DIGITS_SIZE = 16
DIGITS_TEST_PER_CLASS = 36


@register_dataset(
    DatasetInfo("digits", 1, DIGITS_SIZE, 10, (0.3053,), (0.3174,), tuple(str(i) for i in range(10)),
                train_min_per_class=138, mirror_safe=False)
)
def load_digits(root: Path, download: bool) -> RawSplits:
    """scikit-learn's bundled 8x8 digits (1797 images), bilinearly upsampled to 16x16.

    The split is fixed: the first 36 images of each class (in file order) are the test set.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=DIGITS_SIZE, mode="bilinear", align_corners=False).clamp_(0, 1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        is_test[torch.nonzero(labels == c).flatten()[:DIGITS_TEST_PER_CLASS]] = True
    return images[~is_test], labels[~is_test], images[is_test], labels[is_test]


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_idx_dataset(folders: list[Path], title: str, how_to_get: str) -> RawSplits:
    found = {}
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        img, lab = _find_idx(folders, img_stem), _find_idx(folders, lab_stem)
        if img is None or lab is None:
            looked = "\n  ".join(str(f) for f in folders)
            raise DDBenchError(
                f"{title} files not found. Expected {', '.join(s for pair in IDX_FILES.values() for s in pair)} "
                f"(optionally .gz) in one of:\n  {looked}\n{how_to_get}"
            )
        x = torch.from_numpy(_read_idx(img).copy()).float().div_(255.0)[:, None]
        found[split] = (x, torch.from_numpy(_read_idx(lab).astype(np.int64)))
    return found["train"][0], found["train"][1], found["test"][0], found["test"][1]


def _torchvision_idx(cls_name: str, root: Path, download: bool) -> None:
    if download:
        import torchvision

        for train in (True, False):
            getattr(torchvision.datasets, cls_name)(str(root), train=train, download=True)


@register_dataset(DatasetInfo("fashion_mnist", 1, 28, 10, (0.2861,), (0.3530,), FASHION_CLASSES,
                             train_min_per_class=6000))
def load_fashion_mnist(root: Path, download: bool) -> RawSplits:
    """Fashion-MNIST from Debian's dataset-fashion-mnist, or torchvision's `<root>/FashionMNIST/raw/`."""
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_DIR]
    if not any(_find_idx(folders, s) for s in IDX_FILES["train"]):
        _torchvision_idx("FashionMNIST", root, download)
    return _load_idx_dataset(
        folders,
        "Fashion-MNIST",
        "Get them with `apt-get install dataset-fashion-mnist` (Debian), or run once with "
        "dataset.download=true on a machine with internet.",
    )


@register_dataset(DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), tuple(str(i) for i in range(10)),
                             train_min_per_class=5421, mirror_safe=False))
def load_mnist(root: Path, download: bool) -> RawSplits:
    folders = [root / "MNIST" / "raw", root / "mnist", root]
    if not any(_find_idx(folders, s) for s in IDX_FILES["train"]):
        _torchvision_idx("MNIST", root, download)
    return _load_idx_dataset(
        folders, "MNIST", "Place torchvision's MNIST files there, or run once with dataset.download=true."
    )


def _from_torchvision(cls_name: str, root: Path, download: bool, layout: str, split_kw: str = "train") -> RawSplits:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    out = []
    for split in (True, False):
        kwargs = {"train": split} if split_kw == "train" else {"split": "train" if split else "test"}
        try:
            ds = cls(str(root), download=download, **kwargs)
        except RuntimeError as err:
            raise DDBenchError(
                f"{cls_name} not found under {root}: expected {layout}. Place the files there (dataset.root=DIR) "
                f"or run once with dataset.download=true on a machine with internet. ({err})"
            ) from None
        data = np.asarray(ds.data)
        x = torch.from_numpy(data).float().div_(255.0)
        x = x if x.shape[1] == 3 else x.permute(0, 3, 1, 2)
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = ds.labels
        out += [x.contiguous(), torch.as_tensor(np.asarray(targets), dtype=torch.int64)]
    return tuple(out)  # type: ignore[return-value]


@register_dataset(DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), CIFAR10_CLASSES,
                             train_min_per_class=5000))
def load_cifar10(root: Path, download: bool) -> RawSplits:
    return _from_torchvision("CIFAR10", root, download, "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}")


@register_dataset(DatasetInfo("cifar100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
                             train_min_per_class=500))
def load_cifar100(root: Path, download: bool) -> RawSplits:
    return _from_torchvision("CIFAR100", root, download, "<root>/cifar-100-python/{train,test,meta}")


@register_dataset(DatasetInfo("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                             train_min_per_class=4659, mirror_safe=False))
def load_svhn(root: Path, download: bool) -> RawSplits:
    return _from_torchvision("SVHN", root, download, "<root>/{train,test}_32x32.mat", split_kw="split")


def load_image_folder(folder: Path, image_size: int, classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read one ImageFolder tree (one sub-folder per class) into [N,3,S,S] in [0,1], resized to S = image_size.

    Bad files stop with a DDBenchError naming them, or are skipped under `folders.folder_options(skip_bad=True)`
    (see ddbench/data/folders.py for what is checked and what is ignored)."""
    from ddbench.data.folders import read_image_folder

    found = read_image_folder(folder, image_size, classes)
    return found.train_x.float().div_(255.0), found.train_y, found.classes


def _folder_splits(train_dir: Path, test_dirs: list[Path], image_size: int, classes: list[str] | None = None,
                   channels: int | None = 3, ignore: tuple[str, ...] = ()) -> RawSplits:
    """A registered folder dataset: train_dir and the first existing test_dirs, every file converted to
    `channels`, no class dropped (its class count is fixed); bad files checked, decoded in parallel and cached
    (ddbench/data/folders.py; skip_bad_files and the cache root come from `folder_options`)."""
    from ddbench.data.folders import read_folder_splits

    return read_folder_splits(train_dir, test_dirs, image_size, classes, channels=channels, keep_classes=True,
                              ignore=ignore).raw()


@register_dataset(DatasetInfo("tinyimagenet", 3, 64, 200, IMAGENET_MEAN, IMAGENET_STD, train_min_per_class=500))
def load_tiny_imagenet(root: Path, download: bool) -> RawSplits:
    """Tiny-ImageNet as ImageFolder: `<root>/tiny-imagenet-200/train/<wnid>/` and `val/<wnid>/` (val regrouped)."""
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    return _folder_splits(base / "train", [base / "val_grouped", base / "val"], 64, ignore=("*_boxes.txt",))


IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
              "n03394916", "n03417042", "n03425413", "n03445777", "n03888605"]
IMAGEWOOF = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
             "n02096294", "n02099601", "n02105641", "n02111889", "n02115641"]


def _imagenet_subset(classes: list[str]):
    def loader(root: Path, download: bool) -> RawSplits:
        return _folder_splits(root / "train", [root / "val", root / "test"], 128, classes)

    return loader


register_dataset(DatasetInfo("imagenette", 3, 128, 10, IMAGENET_MEAN, IMAGENET_STD, tuple(IMAGENETTE)))(
    _imagenet_subset(IMAGENETTE)
)
register_dataset(DatasetInfo("imagewoof", 3, 128, 10, IMAGENET_MEAN, IMAGENET_STD, tuple(IMAGEWOOF)))(
    _imagenet_subset(IMAGEWOOF)
)
