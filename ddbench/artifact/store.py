"""The distilled-set artifact: a directory with `tensors.safetensors` and `meta.json`.

Layout of an artifact directory:

* ``tensors.safetensors``: ``images`` float32 [N,C,H,W] (normalized or ZCA space, class-major),
  ``labels`` int64 [N] (hard) or float32 [N,K] (soft logits), optional ``lr`` (0-d float32) and any
  extra named tensors (factorized parts, ``zca_mean``/``zca_transform``/``zca_inverse``).
* ``meta.json``: dataset, num_classes, image_shape, normalization, ipc, method, label_type, config,
  seed, ddbench_version, git_commit, stored_bytes, file_bytes, created, format_version (and optional ``decode``:
  how to decode factorized or partial sets; its ``stored_bytes`` wins). A factorized artifact stores parts, e.g.
  INFER's real images + UFCs, and the rule in :mod:`ddbench.artifact.decode` that materialises the training set
  (its labels belong to that set); a patch-dropped one (:mod:`ddbench.artifact.patches`) stores its training set.

Loading never executes code: safetensors and JSON only (reference ``.pt`` folders go through
``torch.load(weights_only=True)`` in :mod:`ddbench.artifact.importers`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddbench.utils import DDBenchError, make_parent, share_like_new, write_error

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
RESERVED_NAMES = ("images", "labels", "lr")
ZCA_NAMES = ("zca_mean", "zca_transform", "zca_inverse")


@dataclass
class Artifact:
    """A distilled set in memory: images, labels, metadata, optional learned lr and extra tensors."""

    images: Tensor
    labels: Tensor
    meta: dict
    lr: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def label_type(self) -> str:
        """'soft' for float [N,K] labels (logits), 'hard' for integer [N] class indices."""
        if self.labels.is_floating_point() and self.labels.ndim == 2:
            return "soft"
        return "hard"

    @property
    def ipc(self) -> int:
        return int(self._meta_field("ipc"))

    @property
    def num_classes(self) -> int:
        return int(self._meta_field("num_classes"))

    @property
    def dataset(self) -> str:
        return str(self._meta_field("dataset"))

    @property
    def normalization(self) -> dict:
        return dict(self.meta.get("normalization") or {})

    def _meta_field(self, key: str) -> Any:
        if key not in self.meta or self.meta[key] is None:
            raise DDBenchError(f"artifact meta has no {key!r}; set meta[{key!r}] before using or saving the artifact.")
        return self.meta[key]

    @property
    def factorized(self) -> bool:
        """True when the artifact stores parts plus a decode rule (meta["decode"]) instead of the training set
        (a patch_fill rule describes stored images that are the training set already)."""
        from ddbench.artifact.decode import AS_STORED

        rule = self.meta.get("decode")
        return bool(rule) and not (isinstance(rule, dict) and rule.get("kind") in AS_STORED)

    def training_set(self) -> tuple[Tensor, Tensor]:
        """(images [N,C,H,W], labels): what a network trains on; factorized parts are decoded by meta["decode"]."""
        if not self.factorized:
            return self.images, self.labels
        from ddbench.artifact.decode import decode

        return decode(self.images, self.extras, self.meta["decode"]), self.labels

    def save(self, path: str | Path) -> Path:
        """Validate and write this artifact to directory `path` atomically (see `save_artifact`); returns the path."""
        return save_artifact(self, path)

    def images_in_pixels(self) -> Tensor:
        """The training set's images as raw pixels [N,C,H,W] in [0,1] on the CPU: mean/std normalization undone
        (or ZCA inverted with the artifact's zca_inverse/zca_mean), a factorized set decoded first, and values
        clamped to [0,1] as the exporters write them. Distilled values outside the pixel range are clamped, so
        to evaluate the set exactly pass `images` with `normalized=True` (ddbench.evaluate)."""
        from ddbench.artifact.exporters import to_pixels

        return to_pixels(self)

    def class_of(self) -> Tensor:
        """Class index per training image [N]: the class-major position for soft labels (image i is of class
        i // (N / K), N / K = ipc unless a factorized set decodes to more, whatever its learned logits say), the
        label itself for hard labels."""
        if self.label_type == "soft":
            per_class = len(self.labels) // self.num_classes
            return torch.arange(self.num_classes, device=self.labels.device).repeat_interleave(per_class)
        return self.labels

    def _check_meta_types(self) -> None:
        for key in ("dataset", "num_classes", "ipc", "image_shape"):
            self._meta_field(key)

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        meta = self.meta
        if not isinstance(meta["dataset"], str) or not meta["dataset"]:
            raise DDBenchError(f"artifact meta 'dataset' must be a dataset name, got {meta['dataset']!r}; fix meta.json.")
        for key in ("ipc", "num_classes"):
            if not whole(meta[key]) or meta[key] < 1:
                raise DDBenchError(f"artifact meta {key!r} must be an int >= 1, got {meta[key]!r}; fix meta.json.")
        shape = meta["image_shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(whole(v) and v >= 1 for v in shape):
            raise DDBenchError(f"artifact meta 'image_shape' must be [C, H, W] of ints >= 1, got {shape!r}; "
                               "fix meta.json.")

    def validate(self) -> None:
        """Check tensors against meta; raise DDBenchError naming the first problem and how to fix it."""
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
            raise DDBenchError("artifact images and labels must be torch tensors; convert them with torch.as_tensor.")
        self._check_meta_types()
        if images.ndim != 4 or images.dtype != torch.float32:
            raise DDBenchError(
                f"artifact images must be a 4-D float32 tensor [N,C,H,W], got {images.dtype} of shape "
                f"{list(images.shape)}; reshape to [N,C,H,W] and convert with .float()."
            )
        n, k, ipc = images.shape[0], self.num_classes, self.ipc
        if ipc < 1 or k < 1:
            raise DDBenchError(f"artifact meta has ipc={ipc}, num_classes={k}; both must be positive integers.")
        if self.factorized:
            from ddbench.artifact.decode import check_rule

            n = check_rule(self.meta["decode"], images, self.extras, k, ipc)  # labels belong to the decoded set
        elif n != ipc * k:
            raise DDBenchError(
                f"artifact holds {n} images but meta says ipc={ipc} x num_classes={k} = {ipc * k}; "
                "fix meta['ipc'] or store exactly ipc images per class."
            )
        shape = [int(s) for s in self.meta["image_shape"]]
        if list(images.shape[1:]) != shape:
            raise DDBenchError(
                f"artifact images have shape {list(images.shape[1:])} per image but meta image_shape is {shape}; "
                "resize the images or fix meta['image_shape'] to match the dataset."
            )
        if labels.ndim == 1 and not labels.is_floating_point():
            if labels.dtype != torch.int64:
                raise DDBenchError(f"hard labels must be int64, got {labels.dtype}; convert them with labels.long().")
            if labels.shape[0] != n:
                raise DDBenchError(f"artifact has {n} images but {labels.shape[0]} labels; store one label per image.")
            if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise DDBenchError(
                    f"hard labels must lie in [0, {k - 1}], got range [{int(labels.min())}, {int(labels.max())}]; "
                    "fix the labels or meta['num_classes']."
                )
            expected = torch.arange(k, device=labels.device).repeat_interleave(n // k)
            if not torch.equal(labels, expected):
                raise DDBenchError(
                    "hard labels are not class-major with ipc images per class (all of class 0, then class 1, ...); "
                    "sort the images by label with a stable sort so that every class has ipc images."
                )
        elif labels.ndim == 2 and labels.is_floating_point():
            if labels.shape != (n, k):
                raise DDBenchError(
                    f"soft labels must have shape [N, num_classes] = [{n}, {k}], got {list(labels.shape)}; "
                    "store one row of logits per image with one column per class."
                )
            if not bool(torch.isfinite(labels).all()):
                raise DDBenchError("soft labels contain NaN or inf; the distillation diverged, store finite logits.")
        else:
            raise DDBenchError(
                f"labels must be int64 [N] (hard) or float [N, num_classes] (soft logits), got {labels.dtype} of "
                f"shape {list(labels.shape)}; convert hard labels with .long() or soft labels with .float()."
            )
        if self.lr is not None:
            lr = self.lr
            if not isinstance(lr, Tensor) or lr.numel() != 1:
                raise DDBenchError("artifact lr must be a single-value tensor; store it as torch.tensor(value).")
            value = float(lr.detach().reshape(()))
            if not math.isfinite(value):
                raise DDBenchError(f"artifact lr is {value} (not finite); the learned lr diverged, store a finite lr > 0.")
            if value <= 0:
                raise DDBenchError(f"artifact lr is {value} but must be > 0; store a positive learning rate or drop lr.")
        if not bool(torch.isfinite(images).all()):
            raise DDBenchError("artifact images contain NaN or inf; the distillation diverged, store finite images.")
        for name, tensor in self.extras.items():
            if name in RESERVED_NAMES:
                raise DDBenchError(f"extra tensor name {name!r} is reserved; rename it (reserved: {', '.join(RESERVED_NAMES)}).")
            if not isinstance(tensor, Tensor):
                raise DDBenchError(f"extra {name!r} is a {type(tensor).__name__}, not a tensor; store tensors only.")
        if self.normalization.get("kind") == "zca":
            missing = [name for name in ("zca_mean", "zca_inverse") if name not in self.extras]
            if missing:
                raise DDBenchError(
                    f"meta says the images are in ZCA space but the extras lack {', '.join(missing)}; "
                    "store ZCA.tensors() in artifact.extras so the images can be decoded."
                )


def _tensor_dict(artifact: Artifact) -> dict[str, Tensor]:
    def plain(t: Tensor) -> Tensor:
        return t.detach().to("cpu").contiguous().clone()

    tensors = {"images": plain(artifact.images).float()}
    labels = plain(artifact.labels)
    tensors["labels"] = labels.float() if labels.is_floating_point() else labels.long()
    if artifact.lr is not None:
        tensors["lr"] = plain(artifact.lr).float().reshape(())
    for name, tensor in artifact.extras.items():
        tensors[name] = plain(tensor)
    return tensors


def _is_artifact_dir(path: Path) -> bool:
    return path.is_dir() and (path / TENSORS_FILE).is_file() and (path / META_FILE).is_file()


def _check_replaceable(path: Path, what: str) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise DDBenchError(f"{path} exists and is not a directory; choose another output path for the {what}.")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, swapping out an existing `target` if there is one."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_artifact(artifact: Artifact, path: str | Path) -> Path:
    """Validate and write `artifact` to directory `path` atomically; return the path.

    The files are written into a temporary sibling directory which is then renamed into place, so a
    reader sees either the old artifact or the new one. An existing artifact at `path` is replaced; an
    existing non-empty directory that is not an artifact is refused. Fills (in `artifact.meta` too)
    label_type, stored_bytes, ddbench_version, git_commit, created and format_version.
    """
    from safetensors.torch import save as st_save

    import ddbench
    from ddbench.utils import git_commit

    artifact.validate()
    path = Path(path)
    _check_replaceable(path, "artifact")
    if path.is_dir() and any(path.iterdir()) and not _is_artifact_dir(path):
        raise DDBenchError(
            f"{path} is a non-empty directory that is not a ddbench artifact; refusing to replace it. "
            "Choose a new output path or remove the directory first."
        )
    blob = st_save(_tensor_dict(artifact))
    meta = dict(artifact.meta)
    decode = meta.get("decode") or {}
    meta.update(
        label_type=artifact.label_type,
        # a factorized/partial set states what it really stores in its decode rule; file_bytes is the file size
        stored_bytes=int(decode.get("stored_bytes", len(blob))),
        file_bytes=len(blob),
        ddbench_version=ddbench.__version__,
        git_commit=git_commit(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        format_version=FORMAT_VERSION,
    )
    meta.setdefault("method", None)
    meta.setdefault("config", {})
    meta.setdefault("seed", None)
    meta["image_shape"] = [int(s) for s in meta["image_shape"]]
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n").encode()

    make_parent(path)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        share_like_new(tmp, directory=True)
        _fsync_write(tmp / TENSORS_FILE, blob)
        _fsync_write(tmp / META_FILE, meta_bytes)
        replace_dir(tmp, path)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise
    artifact.meta = meta
    return path


def read_artifact_dir(path: Path) -> Artifact:
    """Read a ddbench artifact directory (safetensors + JSON only) and validate it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (path / META_FILE).is_file():
        raise DDBenchError(f"{path} has {TENSORS_FILE} but no {META_FILE}; the artifact is incomplete, save it again.")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DDBenchError(f"{path / META_FILE} is not valid JSON ({err}); the artifact is corrupt, save it again.") from None
    if not isinstance(meta, dict):
        raise DDBenchError(f"{path / META_FILE} must hold a JSON object; the artifact is corrupt, save it again.")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DDBenchError(
            f"{path} has artifact format_version {version!r}, newer than this ddbench understands "
            f"({FORMAT_VERSION}); upgrade ddbench."
        )
    try:
        tensors = load_file(str(path / TENSORS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise DDBenchError(f"could not read {path / TENSORS_FILE} ({err}); the artifact is corrupt, save it again.") from None
    for key in ("images", "labels"):
        if key not in tensors:
            raise DDBenchError(f"{path / TENSORS_FILE} has no {key!r} tensor; the artifact is corrupt, save it again.")
    images, labels, lr = tensors.pop("images"), tensors.pop("labels"), tensors.pop("lr", None)
    artifact = Artifact(images=images, labels=labels, meta=meta, lr=lr, extras=tensors)
    artifact.validate()
    return artifact


def load_artifact(path: str | Path, dataset: str | None = None) -> Artifact:
    """Load a ddbench artifact dir, a reference-format folder (images_best.pt ...) or an ImageFolder.

    `dataset` is required for the latter two (it supplies the class count, image shape and
    normalization); for a ddbench artifact it is optional and, when given, must match meta['dataset'].
    Nothing is ever executed: safetensors/JSON, weights-only tensor files, or image files.
    """
    from ddbench.artifact import importers

    return importers.import_path(path, dataset)
