"""Damaged image folders: every bad input is named before any training (exit 2, one `error:` line, no record), or
skipped with one counting warning under dataset.skip_bad_files=true; decoding is parallel and cached."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddbench import checks
from ddbench.data import folders, load_dataset
from ddbench.data.sources import _folder_splits
from ddbench.utils import DDBenchError

CLASSES = ("cat", "dog", "fox")
SIZE = 8


def png(path: Path, seed: int, mode: str = "RGB", size: int = SIZE) -> Path:
    """A noise PNG (distinct per seed, so mean/std are well defined)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def folder(root: Path, mode: str = "RGB", train: int = 3, test: int = 2, classes=CLASSES) -> Path:
    """root/train/<class>/{0..train-1}.png and root/test/<class>/{0..test-1}.png, SIZE x SIZE."""
    seed = 0
    for split, n in (("train", train), ("test", test)):
        for name in classes:
            for i in range(n):
                seed += 1
                png(root / split / name / f"{i}.png", seed, mode)
    return root


def truncated(path: Path) -> Path:
    """A PNG cut at 60 %: the header opens, the pixel data does not decode."""
    whole = png(path, 99, size=32).read_bytes()
    path.write_bytes(whole[: int(len(whole) * 0.6)])
    return path


# The damaged inputs: (edit of a good folder, the path an error must name).
def undecodable(root: Path) -> Path:
    (root / "train" / "cat" / "bad.png").write_bytes(b"this is not a png")
    return root / "train" / "cat" / "bad.png"


def cut_png(root: Path) -> Path:
    return truncated(root / "train" / "dog" / "cut.png")


def text_file(root: Path) -> Path:
    (root / "train" / "fox" / "notes.txt").write_text("labels are in the folder names")
    return root / "train" / "fox" / "notes.txt"


def empty_class(root: Path) -> Path:
    (root / "train" / "emu").mkdir()
    (root / "test" / "emu").mkdir()
    return root / "train" / "emu"


def missing_test_class(root: Path) -> Path:
    for file in (root / "test" / "fox").iterdir():
        file.unlink()
    (root / "test" / "fox").rmdir()
    return root / "test" / "fox"


def gray_among_rgb(root: Path) -> Path:
    return png(root / "train" / "cat" / "gray.png", 7, mode="L")


def class_only_in_test(root: Path) -> Path:
    png(root / "test" / "owl" / "0.png", 8)
    return root / "test" / "owl"


DAMAGES = [undecodable, cut_png, text_file, empty_class, missing_test_class, gray_among_rgb, class_only_in_test]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_bad_input_stops_with_its_path(tmp_path, damage):
    root = folder(tmp_path / "f")
    bad = damage(root)
    with pytest.raises(DDBenchError) as err:
        load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    message = str(err.value)
    assert str(bad) in message and "1 bad input" in message and "dataset.skip_bad_files=true" in message
    assert not (tmp_path / "cache" / folders.CACHE_KIND).exists()  # nothing cached from a failed read


@pytest.mark.parametrize("damage,classes,train,test", [
    (undecodable, CLASSES, [3, 3, 3], [2, 2, 2]),
    (cut_png, CLASSES, [3, 3, 3], [2, 2, 2]),
    (text_file, CLASSES, [3, 3, 3], [2, 2, 2]),
    (gray_among_rgb, CLASSES, [3, 3, 3], [2, 2, 2]),
    (empty_class, CLASSES, [3, 3, 3], [2, 2, 2]),
    (missing_test_class, ("cat", "dog"), [3, 3], [2, 2]),
    (class_only_in_test, CLASSES, [3, 3, 3], [2, 2, 2]),
], ids=lambda v: getattr(v, "__name__", None))
def test_skip_bad_files_skips_and_counts(tmp_path, caplog, damage, classes, train, test):
    root = folder(tmp_path / "f")
    bad = damage(root)
    with caplog.at_level(logging.WARNING, logger="ddbench.data.folders"):
        splits = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache",
                              skip_bad_files=True)
    assert splits.info.class_names == classes and splits.info.channels == 3
    assert splits.train.counts.tolist() == train and splits.test.counts.tolist() == test
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0]
    assert ("dropped 1 class from both splits" in warnings[0]) == (damage in (empty_class, missing_test_class,
                                                                               class_only_in_test))
    assert ("skipped 1 bad file" in warnings[0]) == (damage in (undecodable, cut_png, text_file, gray_among_rgb))


def test_many_bad_files_names_the_first_few_and_counts_them(tmp_path, caplog):
    root = folder(tmp_path / "f")
    for i in range(8):
        (root / "train" / "dog" / f"junk{i}.png").write_bytes(b"junk")
    with pytest.raises(DDBenchError, match="8 bad inputs") as err:
        load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    message = str(err.value)
    assert str(root / "train" / "dog" / "junk0.png") in message and "and 3 more" in message
    assert "junk7.png" not in message
    with caplog.at_level(logging.WARNING, logger="ddbench.data.folders"):
        splits = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache",
                              skip_bad_files=True)
    assert splits.train.counts.tolist() == [3, 3, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 8 bad files" in warnings[0] and "and 3 more" in warnings[0]


def test_a_class_whose_files_are_all_bad_is_dropped_from_both_splits(tmp_path, caplog):
    root = folder(tmp_path / "f")
    for file in (root / "train" / "dog").iterdir():
        file.write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="ddbench.data.folders"):
        splits = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache",
                              skip_bad_files=True)
    assert splits.info.class_names == ("cat", "fox") and splits.info.num_classes == 2
    assert splits.train.counts.tolist() == [3, 3] and splits.test.counts.tolist() == [2, 2]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 3 bad files" in warning and "dropped 1 class" in warning and "'dog'" in warning


def test_hidden_files_are_ignored_silently(tmp_path, caplog):
    root = folder(tmp_path / "f")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (root / "test" / ".DS_Store").write_bytes(b"\x00")
    (root / "train" / ".git").mkdir()
    (root / "train" / "dog" / "Thumbs.db").write_bytes(b"\x00")
    with caplog.at_level(logging.WARNING):
        splits = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    assert splits.info.class_names == CLASSES and splits.train.counts.tolist() == [3, 3, 3]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_all_grayscale_folder_loads_as_one_channel(tmp_path):
    root = folder(tmp_path / "f", mode="L")
    splits = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    assert splits.info.channels == 1 and splits.train.images.shape == (9, 1, SIZE, SIZE)
    png(root / "train" / "dog" / "colour.png", 5)  # now an RGB file is the odd one out
    with pytest.raises(DDBenchError, match="colour.png"):
        load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")


def test_registered_folder_datasets_convert_channels_and_keep_their_classes(tmp_path):
    """tinyimagenet/imagenette/imagewoof declare 3 channels: a grayscale JPEG is converted (ImageNet holds some),
    Tiny-ImageNet's *_boxes.txt are not images but expected; a class cannot be dropped even when skipping."""
    root = folder(tmp_path / "f")
    png(root / "train" / "cat" / "gray.png", 7, mode="L")
    (root / "train" / "cat" / "cat_boxes.txt").write_text("0.png 0 0 8 8")
    with folders.folder_options(cache=tmp_path / "cache"):
        train_x, train_y, test_x, test_y = _folder_splits(root / "train", [root / "val", root / "test"], SIZE,
                                                          ignore=("*_boxes.txt",))
    assert train_x.shape == (10, 3, SIZE, SIZE) and test_x.shape == (6, 3, SIZE, SIZE)
    assert torch.bincount(train_y).tolist() == [4, 3, 3]
    undecodable(root)
    missing_test_class(root)
    with folders.folder_options(skip_bad=True, cache=tmp_path / "cache"):
        with pytest.raises(DDBenchError, match="cannot drop") as err:
            _folder_splits(root / "train", [root / "test"], SIZE, ignore=("*_boxes.txt",))
    assert str(root / "test" / "fox") in str(err.value)
    with pytest.raises(DDBenchError, match="bad.png"):  # a fixed class list (imagenette) reads only its classes
        _folder_splits(root / "train", [root / "test"], SIZE, classes=["cat", "dog"], ignore=("*_boxes.txt",))
    with folders.folder_options(skip_bad=True, cache=tmp_path / "cache"):
        train_x, train_y, _, _ = _folder_splits(root / "train", [root / "test"], SIZE, classes=["cat", "dog"],
                                                ignore=("*_boxes.txt",))
    assert torch.bincount(train_y).tolist() == [4, 3]


def test_skip_bad_files_must_be_a_bool():
    with pytest.raises(DDBenchError, match="dataset.skip_bad_files"):
        checks.check_dataset({"name": "imagefolder", "skip_bad_files": "yes"})
    checks.check_dataset({"name": "imagefolder", "skip_bad_files": True})


# ---------------------------------------------------------------------------------------- cache and workers


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """The file count of every decode_files call."""
    calls: list[int] = []
    original = folders.decode_files

    def counting(paths, *args):
        calls.append(len(paths))
        return original(paths, *args)

    monkeypatch.setattr(folders, "decode_files", counting)
    return calls


def test_second_load_comes_from_the_cache(tmp_path, decodes, caplog):
    root = folder(tmp_path / "f")
    first = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    assert decodes == [15]
    with caplog.at_level(logging.INFO, logger="ddbench"):
        again = load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache")
    assert decodes == [15]
    assert any("read from the cache" in r.getMessage() for r in caplog.records)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.labels, again.test.labels)
    assert first.info == again.info
    load_dataset("imagefolder", root=root, image_size=4, cache=tmp_path / "cache")  # another size: another entry
    load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache", skip_bad_files=True)
    assert decodes == [15, 15, 15]


def test_a_changed_file_invalidates_the_cache(tmp_path, decodes):
    root = folder(tmp_path / "f")
    cache = tmp_path / "cache"
    before = load_dataset("imagefolder", root=root, image_size=SIZE, cache=cache)
    target = root / "train" / "cat" / "0.png"
    png(target, 1234)  # new content, same name
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load_dataset("imagefolder", root=root, image_size=SIZE, cache=cache)
    assert decodes == [15, 15]
    assert not torch.equal(before.train.images[0], after.train.images[0])
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))  # only the mtime
    load_dataset("imagefolder", root=root, image_size=SIZE, cache=cache)
    png(root / "train" / "cat" / "9.png", 4321)  # a new file
    load_dataset("imagefolder", root=root, image_size=SIZE, cache=cache)
    assert decodes == [15, 15, 15, 16]


def test_skipped_files_are_warned_of_again_from_the_cache(tmp_path, decodes, caplog):
    root = folder(tmp_path / "f")
    bad = undecodable(root)
    for _ in range(2):
        load_dataset("imagefolder", root=root, image_size=SIZE, cache=tmp_path / "cache", skip_bad_files=True)
    assert decodes == [16]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(str(bad) in w and "skipped 1 bad file" in w for w in warnings)
    assert "as cached" in warnings[1]


def test_worker_processes_decode_the_same_pixels(tmp_path, monkeypatch, caplog):
    root = folder(tmp_path / "f")
    bad = cut_png(root)
    serial = folders.read_folder_splits(root / "train", [root / "test"], SIZE, skip_bad=True, cache=tmp_path / "a")
    monkeypatch.setattr(folders, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(folders, "CHUNK_FILES", 3)
    monkeypatch.setattr(folders, "MAX_WORKERS", 2)
    monkeypatch.setattr(folders.os, "cpu_count", lambda: 2)
    assert folders._workers(16) == 2
    with caplog.at_level(logging.INFO, logger="ddbench.data.folders"):
        parallel = folders.read_folder_splits(root / "train", [root / "test"], SIZE, skip_bad=True,
                                              cache=tmp_path / "b")
    assert any("in 2 worker processes" in r.getMessage() for r in caplog.records)
    assert not any("failed" in r.getMessage() for r in caplog.records)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(serial, name), getattr(parallel, name)), name
    assert [p.path for p in parallel.skipped] == [bad]
    assert parallel.train_x.dtype == torch.uint8 and parallel.train_x.shape == (9, 3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------- through the CLI


def ddbench_run(tmp_path: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        os.path.join(os.path.dirname(sys.executable), "ddbench-run"), "method=random", "dataset=imagefolder",
        f"dataset.root={root}", "ipc=1", "smoke=true", f"paths.records={tmp_path / 'records'}",
        f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}", *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def records(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "records").rglob("*.json"))


@pytest.mark.parametrize("damage", [undecodable, missing_test_class], ids=lambda f: f.__name__)
def test_cli_stops_with_one_error_line_and_no_record(tmp_path, damage):
    root = folder(tmp_path / "f")
    bad = damage(root)
    done = ddbench_run(tmp_path, root)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and str(bad) in errors[0] and "internal error" not in errors[0]
    assert records(tmp_path) == []


def test_cli_skip_bad_files_runs_and_warns_once(tmp_path):
    root = folder(tmp_path / "f")
    bad = [undecodable(root), text_file(root), cut_png(root)]
    missing_test_class(root)
    done = ddbench_run(tmp_path, root, "dataset.skip_bad_files=true")
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    warnings = [line for line in output.splitlines() if "skip_bad_files=true" in line and "WARNING" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "skipped 3 bad files" in warnings[0] and "dropped 1 class from both splits" in warnings[0]
    assert all(str(path) in warnings[0] for path in bad)
    (record,) = records(tmp_path)
    assert record.parent.parent.name == "imagefolder"
