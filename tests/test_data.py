"""Datasets: the registry, digits / Fashion-MNIST / ImageFolder loading, class-major tensors and ZCA."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ddbench.data.sources as sources
from ddbench.data import ZCA, ClassTensors, DatasetInfo, dataset_info, list_datasets, load_dataset
from ddbench.utils import DDBenchError, make_generator

BUILTIN = {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagenette", "imagewoof"}
FASHION_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_lists_builtin_datasets_with_uniform_metadata():
    names = list_datasets()
    assert BUILTIN <= set(names)
    assert names == sorted(names)
    for name in names:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo)
        assert info.name == name
        assert info.channels in (1, 3)
        assert info.image_size > 0 and info.num_classes > 1
        assert len(info.mean) == len(info.std) == info.channels
        assert all(0 < s < 1 for s in info.std) and all(0 <= m <= 1 for m in info.mean)
        assert info.class_names == () or len(info.class_names) == info.num_classes
        assert info.shape == (info.channels, info.image_size, info.image_size)


def test_registry_accepts_spelling_variants():
    assert dataset_info("Fashion-MNIST") == dataset_info("fashion_mnist")


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(DDBenchError) as err:
        dataset_info("nope")
    message = str(err.value)
    assert "'nope'" in message
    for name in BUILTIN:
        assert name in message
    with pytest.raises(DDBenchError, match="valid names"):
        load_dataset("nope")


# ------------------------------------------------------------------------------------------------- digits


def test_digits_shape_classes_and_fixed_split(digits):
    info, train, test = digits.info, digits.train, digits.test
    assert (info.name, info.num_classes, info.shape) == ("digits", 10, (1, 16, 16))
    assert train.images.shape == (1437, 1, 16, 16) and test.images.shape == (360, 1, 16, 16)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    assert torch.equal(test.counts, torch.full((10,), 36))
    assert digits.zca is None

    again = load_dataset("digits")
    assert torch.equal(again.test.images, test.images) and torch.equal(again.test.labels, test.labels)
    assert torch.equal(again.train.images, train.images)

    # sklearn's digits hold no duplicate images, so disjoint rows mean disjoint samples
    train_rows = {row.numpy().tobytes() for row in train.images.flatten(1)}
    test_rows = {row.numpy().tobytes() for row in test.images.flatten(1)}
    assert len(train_rows) == len(train) and len(test_rows) == len(test)
    assert not train_rows & test_rows


def test_digits_normalized_with_its_train_statistics(digits):
    images = digits.train.images
    assert abs(float(images.mean())) < 0.01
    assert abs(float(images.std()) - 1) < 0.01
    # the stored mean/std map raw [0,1] pixels to the normalized space
    raw = images * digits.info.std[0] + digits.info.mean[0]
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_class_major_order_and_offsets(digits):
    for split in (digits.train, digits.test):
        labels, offsets = split.labels, split.offsets
        assert offsets.dtype == torch.int64 and offsets.shape == (11,)
        assert int(offsets[0]) == 0 and int(offsets[-1]) == len(split)
        assert bool((labels[1:] >= labels[:-1]).all())
        assert torch.equal(split.counts, torch.bincount(labels, minlength=10))
        for c in range(10):
            assert bool((labels[split.class_slice(c)] == c).all())
            assert torch.equal(split.class_images(c), split.images[int(offsets[c]) : int(offsets[c + 1])])


def test_from_unsorted_is_a_stable_class_sort():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    images = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1)
    split = ClassTensors.from_unsorted(images, labels, num_classes=4)
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert split.images.flatten().tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert split.offsets.tolist() == [0, 3, 5, 7, 7]  # an empty class keeps its slot


def test_sample_per_class_distinct_rows_of_the_right_class(digits):
    train = digits.train
    rows = train.sample_per_class(20, make_generator(3))
    assert rows.shape == (10, 20) and rows.dtype == torch.int64
    for c in range(10):
        assert len(set(rows[c].tolist())) == 20
        assert bool((train.labels[rows[c]] == c).all())
    assert torch.equal(rows, train.sample_per_class(20, make_generator(3)))
    assert not torch.equal(rows, train.sample_per_class(20, make_generator(4)))
    # all rows of a class can be drawn: a permutation
    full = train.sample_per_class(int(train.counts.min()), make_generator(0))
    assert len(set(full[0].tolist())) == int(train.counts.min())


def test_sample_per_class_larger_than_a_class_draws_with_replacement():
    split = ClassTensors.from_unsorted(torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 1, 1, 1]), num_classes=2)
    rows = split.sample_per_class(4, make_generator(0))
    assert rows.shape == (2, 4)
    assert bool((split.labels[rows[0]] == 0).all()) and bool((split.labels[rows[1]] == 1).all())


def test_truncate_per_class_keeps_the_first_rows_of_each_class(digits):
    small = digits.train.truncate_per_class(3)
    assert torch.equal(small.counts, torch.full((10,), 3))
    for c in range(10):
        assert torch.equal(small.class_images(c), digits.train.class_images(c)[:3])
        assert bool((small.labels[small.class_slice(c)] == c).all())
    uneven = ClassTensors.from_unsorted(torch.arange(5.0).view(5, 1, 1, 1), torch.tensor([0, 0, 0, 1, 1]), 2)
    assert uneven.truncate_per_class(2).counts.tolist() == [2, 2]
    assert uneven.truncate_per_class(3).counts.tolist() == [3, 2]


def test_load_dataset_limits_per_class(digits_small):
    assert torch.equal(digits_small.train.counts, torch.full((10,), 30))
    assert torch.equal(digits_small.test.counts, torch.full((10,), 10))


# ------------------------------------------------------------------------------------------ Fashion-MNIST


@pytest.mark.skipif(not sources.DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    splits = load_dataset("fashion_mnist", root=tmp_path)
    assert splits.train.images.shape == (60000, 1, 28, 28)
    assert splits.test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(splits.train.counts, torch.full((10,), 6000))
    assert torch.equal(splits.test.counts, torch.full((10,), 1000))
    assert abs(float(splits.train.images.mean())) < 0.01 and abs(float(splits.train.images.std()) - 1) < 0.01
    assert splits.info.class_names[0] == "T-shirt/top"


def test_fashion_mnist_missing_files_names_them_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DDBenchError) as err:
        load_dataset("fashion_mnist", root=empty)
    message = str(err.value)
    for name in FASHION_FILES:
        assert name in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(empty / "FashionMNIST" / "raw") in message
    assert "download=true" in message


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_files_under_torchvision_layout_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = load_dataset("fashion_mnist", root=tmp_path)
    assert splits.train.images.shape == (20, 1, 28, 28) and splits.test.images.shape == (10, 1, 28, 28)
    assert torch.equal(splits.train.counts, torch.full((10,), 2))


# ------------------------------------------------------------------------------------------- ImageFolder


COLORS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "fox": (10, 10, 250)}


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 10), color).save(folder / f"{i}.png")
    return root


def test_imagefolder_dataset_loads(tmp_path):
    root = _image_folder(tmp_path / "folder")
    splits = load_dataset("imagefolder", root=root, image_size=8)
    info = splits.info
    assert (info.name, info.channels, info.image_size, info.num_classes) == ("imagefolder", 3, 8, 3)
    assert info.class_names == ("cat", "dog", "fox")
    assert splits.train.images.shape == (9, 3, 8, 8) and splits.test.images.shape == (6, 3, 8, 8)
    assert splits.train.counts.tolist() == [3, 3, 3] and splits.test.counts.tolist() == [2, 2, 2]
    # normalized with the folder's own train statistics; each class keeps its colour
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    for split in (splits.train, splits.test):
        raw = split.images * std + mean
        for c, color in enumerate(COLORS.values()):
            expected = torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1) / 255
            assert torch.allclose(raw[split.class_slice(c)], expected.expand(-1, -1, 8, 8), atol=2e-2)


def test_imagefolder_without_test_split_says_what_is_expected(tmp_path):
    root = _image_folder(tmp_path / "folder")
    shutil.rmtree(root / "test")
    with pytest.raises(DDBenchError, match="test"):
        load_dataset("imagefolder", root=root, image_size=8)
    with pytest.raises(DDBenchError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "missing", image_size=8)


# ---------------------------------------------------------------------------------------------------- ZCA


@pytest.fixture(scope="module")
def raw_digits(digits) -> torch.Tensor:
    """digits train images back in raw [0,1] pixels (what load_dataset(zca=True) fits on)."""
    return digits.train.images * digits.info.std[0] + digits.info.mean[0]


@pytest.fixture(scope="module")
def digits_zca(raw_digits) -> ZCA:
    return ZCA.fit(raw_digits, eps=0.1)


def _offdiag_ratio(cov: torch.Tensor) -> float:
    off = cov - torch.diag(torch.diag(cov))
    return float(off.norm() / cov.norm())


def test_zca_apply_then_invert_recovers_the_input(raw_digits, digits_zca, digits):
    zca = digits_zca
    D = 16 * 16
    assert zca.mean.shape == (D,) and zca.transform.shape == (D, D) and zca.inverse.shape == (D, D)
    white = zca.apply(raw_digits, chunk=500)  # several chunks
    assert white.shape == raw_digits.shape and not torch.allclose(white, raw_digits, atol=1e-2)
    assert torch.allclose(zca.invert(white), raw_digits, atol=1e-3)
    test_raw = digits.test.images * digits.info.std[0] + digits.info.mean[0]
    assert torch.allclose(zca.invert(zca.apply(test_raw)), test_raw, atol=1e-3)
    assert abs(float(white.mean())) < 1e-3


def test_zca_whitened_covariance_is_the_identity_shrunk_by_eps(raw_digits, digits_zca):
    eps, zca = 0.1, digits_zca
    flat = raw_digits.flatten(1).double()
    cov = torch.cov(flat.T)
    white_cov = torch.cov(zca.apply(raw_digits).flatten(1).double().T)
    # ZCA with eps: Cov(white) = C (C + eps I)^-1, eigenvalues lambda / (lambda + eps) <= 1
    expected = cov @ torch.linalg.inv(cov + eps * torch.eye(len(cov), dtype=cov.dtype))
    assert torch.allclose(white_cov, expected, atol=2e-3)
    assert float(torch.diagonal(white_cov).max()) <= 1 + 1e-3  # shrunk: no direction gains variance


def test_zca_decorrelates_full_rank_data():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(32, 32, generator=gen)
    data = 10 * torch.randn(4000, 32, generator=gen) @ mixing  # strongly correlated, variances >> eps
    images = data.view(4000, 2, 4, 4)
    before = _offdiag_ratio(torch.cov(data.double().T))
    after = _offdiag_ratio(torch.cov(ZCA.fit(images).apply(images).flatten(1).double().T))
    assert before > 0.5
    assert after < 0.05


def test_load_dataset_zca_uses_the_train_fitted_whitening(digits, raw_digits, digits_zca):
    splits = load_dataset("digits", zca=True, zca_eps=0.1)
    assert splits.zca is not None and splits.zca.eps == 0.1
    reference = digits_zca
    assert torch.allclose(splits.zca.transform, reference.transform, atol=1e-5)
    assert torch.allclose(splits.train.images, reference.apply(raw_digits), atol=1e-4)
    test_raw = digits.test.images * digits.info.std[0] + digits.info.mean[0]
    assert torch.allclose(splits.test.images, reference.apply(test_raw), atol=1e-4)
    assert torch.allclose(splits.zca.invert(splits.train.images), raw_digits, atol=1e-3)
    # round trip through the artifact tensors
    again = ZCA.from_tensors(splits.zca.tensors(), splits.zca.eps)
    assert torch.equal(again.transform, splits.zca.transform)
