"""Artifacts: save/load round trips, atomicity, validation, importers, exporters and the export CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddbench.artifact import (
    Artifact,
    export_imagefolder,
    export_npz,
    export_png_grid,
    load_artifact,
    save_artifact,
    to_pixels,
)
from ddbench.cli.export import main as export_main
from ddbench.data import ZCA, dataset_info
from ddbench.utils import DDBenchError

K, IPC, C, S = 10, 3, 1, 16  # digits: 10 classes, 1 channel, 16 px


def digits_meta(ipc: int = IPC, **extra) -> dict:
    info = dataset_info("digits")
    meta = {
        "dataset": "digits",
        "num_classes": info.num_classes,
        "image_shape": list(info.shape),
        "normalization": {"kind": "meanstd", "mean": list(info.mean), "std": list(info.std)},
        "ipc": ipc,
        "method": "test",
        "config": {"method": {"name": "test", "steps": 3}, "seed": 7},
        "seed": 7,
    }
    meta.update(extra)
    return meta


def make_artifact(ipc: int = IPC, soft: bool = False, lr: float | None = 0.01, seed: int = 0) -> Artifact:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(K * ipc, C, S, S, generator=gen)
    labels = torch.arange(K).repeat_interleave(ipc)
    if soft:
        labels = torch.randn(K * ipc, K, generator=gen) + 5.0 * torch.nn.functional.one_hot(labels, K)
    return Artifact(
        images=images,
        labels=labels,
        meta=digits_meta(ipc),
        lr=None if lr is None else torch.tensor(lr),
        extras={"basis": torch.randn(4, 8, generator=gen)},
    )


def in_pixel_range(artifact: Artifact) -> Artifact:
    """Same artifact with images that decode to [0,1] without clamping (for exact pixel comparisons)."""
    info = dataset_info("digits")
    pixels = torch.rand(artifact.images.shape, generator=torch.Generator().manual_seed(1))
    artifact.images = (pixels - info.mean[0]) / info.std[0]
    return artifact


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("soft", [False, True])
def test_round_trip(tmp_path: Path, soft: bool) -> None:
    artifact = make_artifact(soft=soft)
    out = save_artifact(artifact, tmp_path / "art")
    assert (out / "tensors.safetensors").is_file() and (out / "meta.json").is_file()
    loaded = load_artifact(out)
    assert torch.equal(loaded.images, artifact.images)
    assert torch.equal(loaded.labels, artifact.labels)
    assert loaded.labels.dtype == (torch.float32 if soft else torch.int64)
    assert loaded.label_type == ("soft" if soft else "hard")
    assert loaded.lr is not None and loaded.lr.ndim == 0 and loaded.lr.dtype == torch.float32
    assert math.isclose(float(loaded.lr), 0.01, rel_tol=1e-6)
    assert set(loaded.extras) == {"basis"} and torch.equal(loaded.extras["basis"], artifact.extras["basis"])
    assert (loaded.ipc, loaded.num_classes, loaded.dataset) == (IPC, K, "digits")
    meta = json.loads((out / "meta.json").read_text())
    for key in (
        "dataset", "num_classes", "image_shape", "normalization", "ipc", "method", "label_type", "config", "seed",
        "ddbench_version", "git_commit", "stored_bytes", "created", "format_version",
    ):
        assert key in meta, key
    assert meta["stored_bytes"] == (out / "tensors.safetensors").stat().st_size > 0
    assert meta["format_version"] == 1 and meta["label_type"] == loaded.label_type
    assert meta["image_shape"] == [C, S, S] and meta["config"]["method"]["steps"] == 3
    assert loaded.meta == meta


def test_round_trip_without_lr_and_with_zca(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    d = C * S * S
    transform = torch.eye(d) + 0.01 * torch.randn(d, d, generator=gen)  # any invertible whitening will do
    zca = ZCA(torch.rand(d, generator=gen), transform, torch.linalg.inv(transform))
    pixels = torch.rand(K * IPC, C, S, S, generator=gen)
    meta = digits_meta(normalization={"kind": "zca", "eps": 0.1, "fitted_on": "train"})
    artifact = Artifact(zca.apply(pixels), torch.arange(K).repeat_interleave(IPC), meta, extras=zca.tensors())
    loaded = load_artifact(save_artifact(artifact, tmp_path / "zca"))
    assert loaded.lr is None and set(loaded.extras) == {"zca_mean", "zca_transform", "zca_inverse"}
    assert torch.allclose(to_pixels(loaded), pixels, atol=1e-3)


def test_save_replaces_existing_atomically(tmp_path: Path) -> None:
    target = tmp_path / "art"
    save_artifact(make_artifact(ipc=2, seed=1), target)
    second = make_artifact(ipc=5, soft=True, lr=None, seed=2)
    save_artifact(second, target)
    loaded = load_artifact(target)
    assert loaded.ipc == 5 and loaded.label_type == "soft" and loaded.lr is None
    assert torch.equal(loaded.images, second.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp or old dirs left behind
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "tensors.safetensors"]


def test_failed_save_leaves_no_trace(tmp_path: Path) -> None:
    bad = make_artifact(lr=-1.0)
    with pytest.raises(DDBenchError):
        save_artifact(bad, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "notes"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(DDBenchError, match="not a ddbench artifact"):
        save_artifact(make_artifact(), target)
    assert (target / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- validation


def test_validation_wrong_count() -> None:
    artifact = make_artifact()
    artifact.meta["ipc"] = IPC + 1
    with pytest.raises(DDBenchError, match=r"holds 30 images but meta says ipc=4"):
        artifact.validate()


@pytest.mark.parametrize("value, pattern", [(float("nan"), "not finite"), (-0.5, "must be > 0"), (0.0, "must be > 0")])
def test_validation_bad_lr(value: float, pattern: str) -> None:
    with pytest.raises(DDBenchError, match=pattern):
        make_artifact(lr=value).validate()


def test_validation_wrong_image_shape() -> None:
    artifact = make_artifact()
    artifact.images = torch.randn(K * IPC, 3, S, S)
    with pytest.raises(DDBenchError, match=r"image_shape is \[1, 16, 16\]"):
        artifact.validate()


def test_validation_other_problems() -> None:
    artifact = make_artifact()
    artifact.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(DDBenchError, match="NaN or inf"):
        artifact.validate()
    artifact = make_artifact()
    artifact.images = artifact.images[:, 0]
    with pytest.raises(DDBenchError, match="4-D float"):
        artifact.validate()
    artifact = make_artifact()
    artifact.labels = artifact.labels.flip(0)
    with pytest.raises(DDBenchError, match="class-major"):
        artifact.validate()
    artifact = make_artifact()
    artifact.labels = artifact.labels.int()
    with pytest.raises(DDBenchError, match="int64"):
        artifact.validate()
    artifact = make_artifact(soft=True)
    artifact.labels = artifact.labels[:, :5]
    with pytest.raises(DDBenchError, match="soft labels must have shape"):
        artifact.validate()


# --------------------------------------------------------------------------- reference-format folders


def test_reference_import(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    gen = torch.Generator().manual_seed(4)
    labels = torch.arange(K).repeat(IPC)  # interleaved 0..9, 0..9, ... (not class-major)
    images = torch.randn(K * IPC, C, S, S, generator=gen)
    images[:, 0, 0, 0] = torch.arange(K * IPC).float()  # tag each image with its original index
    torch.save(images.requires_grad_(True), ref / "images_best.pt")
    torch.save(labels, ref / "labels_best.pt")
    torch.save(torch.tensor(0.02), ref / "lr_best.pt")

    with pytest.raises(DDBenchError, match="dataset"):
        load_artifact(ref)
    art = load_artifact(ref, dataset="digits")
    assert art.images.shape == (K * IPC, C, S, S) and art.ipc == IPC and art.num_classes == K
    assert torch.equal(art.labels, torch.arange(K).repeat_interleave(IPC))
    expected_order = torch.argsort(labels, stable=True)
    assert torch.equal(art.images, images.detach()[expected_order])
    assert art.images[:IPC, 0, 0, 0].tolist() == [0.0, 10.0, 20.0]  # stable within a class
    assert math.isclose(float(art.lr), 0.02, rel_tol=1e-6)
    info = dataset_info("digits")
    assert art.meta["normalization"] == {"kind": "meanstd", "mean": list(info.mean), "std": list(info.std)}
    assert art.meta["image_shape"] == [1, 16, 16] and art.label_type == "hard"

    saved = load_artifact(save_artifact(art, tmp_path / "saved"))
    assert torch.equal(saved.images, art.images) and saved.meta["source"]["layout"] == "reference"


def test_reference_import_soft_labels_and_unequal_counts(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    classes = torch.arange(K).repeat_interleave(2)  # class-major, as the trajectory repos store them
    logits = torch.nn.functional.one_hot(classes, K).float() * 3
    images = torch.randn(2 * K, C, S, S)
    torch.save(images, ref / "images_best.pt")
    torch.save(logits, ref / "labels_best.pt")
    art = load_artifact(ref, dataset="digits")
    assert art.label_type == "soft" and art.ipc == 2
    assert torch.equal(art.labels, logits) and torch.equal(art.images, images)

    torch.save(logits[:-1], ref / "labels_best.pt")
    torch.save(images[:-1], ref / "images_best.pt")
    with pytest.raises(DDBenchError, match="ipc x 10 classes"):
        load_artifact(ref, dataset="digits")

    torch.save(images, ref / "images_best.pt")
    torch.save(torch.cat([torch.zeros(3, dtype=torch.long), classes[3:]]), ref / "labels_best.pt")
    with pytest.raises(DDBenchError, match="same number of images"):
        load_artifact(ref, dataset="digits")


def test_datm_learned_labels_keep_their_class_major_classes(tmp_path: Path) -> None:
    """DATM's labels_best.pt: learned logits of class-major images; one label drifting to another class's argmax
    must neither refuse the set nor move the image."""
    ref = tmp_path / "datm"
    ref.mkdir()
    ipc = 10
    classes = torch.arange(K).repeat_interleave(ipc)
    logits = torch.nn.functional.one_hot(classes, K).float() * 2 + 0.1 * torch.randn(ipc * K, K)
    logits[7] = torch.nn.functional.one_hot(torch.tensor(4), K).float() * 5  # image 7 (class 0) drifted to 4
    images = torch.randn(ipc * K, C, S, S)
    torch.save(images, ref / "images_best.pt")
    torch.save(logits, ref / "labels_best.pt")
    art = load_artifact(ref, dataset="digits")
    assert art.ipc == ipc and art.label_type == "soft"
    assert torch.equal(art.labels, logits) and torch.equal(art.images, images)
    assert torch.equal(art.class_of(), classes)


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    pwned = tmp_path / "pwned"
    torch.save(_Exploit(str(pwned)), ref / "images_best.pt")
    torch.save(torch.arange(K), ref / "labels_best.pt")
    with pytest.raises(DDBenchError, match="refused") as info:
        load_artifact(ref, dataset="digits")
    assert "not a plain tensor file" in str(info.value)
    assert not pwned.exists()


def test_unknown_layout_lists_accepted_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(DDBenchError) as info:
            load_artifact(path, dataset="digits")
        message = str(info.value)
        assert "tensors.safetensors" in message and "images_best.pt" in message and "<class>" in message


# --------------------------------------------------------------------------- ImageFolder and exporters


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    artifact = in_pixel_range(make_artifact())
    out = export_imagefolder(artifact, tmp_path / "folder")
    assert sorted(p.name for p in out.iterdir()) == [f"{c:05d}" for c in range(K)]
    assert sorted(p.name for p in (out / "00003").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    with pytest.raises(DDBenchError, match="dataset"):
        load_artifact(out)
    back = load_artifact(out, dataset="digits")
    assert torch.equal(back.labels, artifact.labels) and back.ipc == IPC
    assert (to_pixels(back) - to_pixels(artifact)).abs().max() <= 1 / 255 + 1e-6
    export_imagefolder(artifact, out)  # a previous export is replaced in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_imagefolder_import_converts_channels_and_size(tmp_path: Path) -> None:
    from PIL import Image

    for c in range(K):
        (tmp_path / "f" / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "f" / f"class{c}" / "a.jpg")
    art = load_artifact(tmp_path / "f", dataset="digits")
    assert art.images.shape == (K, 1, S, S) and art.ipc == 1
    assert torch.allclose(to_pixels(art), torch.ones(K, 1, S, S), atol=1 / 255)


def test_soft_labels_export_by_argmax(tmp_path: Path) -> None:
    artifact = make_artifact(soft=True)
    export_imagefolder(artifact, tmp_path / "soft")
    assert all(len(list((tmp_path / "soft" / f"{c:05d}").iterdir())) == IPC for c in range(K))


def test_png_grid(tmp_path: Path) -> None:
    from PIL import Image

    artifact = in_pixel_range(make_artifact())
    path = export_png_grid(artifact, tmp_path / "grid.png", padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 + K * (S + 2), 2 + IPC * (S + 2))
    expected = (to_pixels(artifact) * 255).round().to(torch.uint8).numpy()
    for row, col in [(0, 0), (4, 2), (9, 1)]:
        top, left = 2 + row * (S + 2), 2 + col * (S + 2)
        assert np.array_equal(grid[top : top + S, left : left + S], expected[row * IPC + col, 0])

    big = make_artifact(ipc=25)
    grid = np.asarray(Image.open(export_png_grid(big, tmp_path / "big.png", max_per_class=10)))
    assert grid.shape[1] == 2 + 10 * (S + 2)


def test_npz_export(tmp_path: Path) -> None:
    artifact = make_artifact(soft=True)
    path = export_npz(artifact, tmp_path / "set.npz")
    with np.load(path) as data:
        assert np.array_equal(data["images"], artifact.images.numpy())
        assert np.array_equal(data["labels"], artifact.labels.numpy())
        assert np.isclose(float(data["lr"]), 0.01)
        assert np.array_equal(data["basis"], artifact.extras["basis"].numpy())
        assert json.loads(str(data["meta"]))["dataset"] == "digits"


# --------------------------------------------------------------------------- CLI


def test_cli_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    art_dir = save_artifact(make_artifact(), tmp_path / "art")
    assert export_main([str(art_dir), "--format", "png-grid", "--out", str(tmp_path / "g.png")]) == 0
    assert export_main([str(art_dir), "--format", "npz", "--out", str(tmp_path / "a.npz")]) == 0
    assert export_main([str(art_dir), "--format", "imagefolder", "--out", str(tmp_path / "if")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0 and (tmp_path / "a.npz").stat().st_size > 0
    assert len(list((tmp_path / "if").iterdir())) == K

    ref = tmp_path / "ref"
    ref.mkdir()
    torch.save(torch.randn(K, C, S, S), ref / "images_best.pt")
    torch.save(torch.arange(K), ref / "labels_best.pt")
    out = tmp_path / "imported"
    assert export_main([str(ref), "--format", "ddbench", "--out", str(out), "--dataset", "digits"]) == 0
    assert load_artifact(out).ipc == 1
    assert "wrote" in capsys.readouterr().out


def test_cli_missing_path_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = export_main([str(tmp_path / "nope"), "--format", "npz", "--out", str(tmp_path / "x.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "does not exist" in err
    assert "Traceback" not in err and not (tmp_path / "x.npz").exists()
