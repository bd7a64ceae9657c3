"""Image folders read into tensors: damaged inputs named before any training, parallel decoding, a tensor cache.

Layout: `<split>/<class>/**/<image>`, one sub-folder per class (sorted by name = class index unless the dataset
fixes its class list). What counts as what:

* image files: the extensions in IMAGE_EXTENSIONS (case-insensitive); each is fully decoded (`img.load()`), so
  a truncated file is found here and not during training;
* ignored silently: names starting with "." (`.DS_Store`, `._*` AppleDouble files, `.git/`), IGNORED_NAMES
  (`Thumbs.db`, `desktop.ini`), a loader's own `ignore` patterns (Tiny-ImageNet's `*_boxes.txt`) and files lying
  directly in a split folder (they belong to no class);
* bad inputs: any other file (`notes.txt`), a file that cannot be decoded, a file whose channel count differs from
  the folder's majority (only where the dataset does not fix its channels), a class folder without images, a
  class missing from the test split, and a test class that train lacks.

Channels: a dataset that declares its channels (tinyimagenet, imagenette, imagewoof: 3) converts every file to
them, as torchvision's ImageFolder does (ImageNet-derived sets hold some grayscale and CMYK JPEGs). A plain
`imagefolder` takes the majority of its files: 1 channel for an all-grayscale folder (modes 1/L/LA/I/F, and a
palette of gray), 3 otherwise (RGB, RGBA with the alpha dropped, CMYK, colour palettes); a tie counts as 3.

By default bad inputs stop the load with one DDBenchError naming the first few paths and the count; with
`skip_bad=True` (`dataset.skip_bad_files=true`) they are skipped with one warning that counts them, and a class
left without images in either split is dropped from both (not allowed where the dataset fixes its classes).

Decoding runs in worker processes for large folders, and the decoded uint8 tensors are cached (kind "folders")
keyed on the folder's file list with sizes and mtimes, the image size, the channels and the skip setting, so a
second load of an unchanged folder reads one file.
"""

from __future__ import annotations

import contextvars
import fnmatch
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ddbench.utils import DDBenchError, stable_hash

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SHOWN = 5  # bad inputs named in a message; the rest are counted
PARALLEL_MIN_FILES = 512  # fewer files decode in this process
CHUNK_FILES = 64  # files per task of a worker process
MAX_WORKERS = 4
CACHE_KIND = "folders"
FORMAT = 1  # bump when the cached tensors change meaning
SKIP_HINT = ("set dataset.skip_bad_files=true to skip bad inputs (a class left without images, or missing from one "
             "split, is then dropped from both splits)")


@dataclass(frozen=True)
class Problem:
    """A bad input: the file or class folder, and why."""

    path: Path
    why: str
    cls: str | None = None  # the class, for a problem of a whole class (it is dropped when skipped)

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


@dataclass
class FolderSplits:
    """Decoded splits: images uint8 [N,C,H,W], labels int64 [N] indexing `classes`, and what was skipped."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    skipped: list[Problem] = field(default_factory=list)  # bad files and classes left out (skip_bad=True)

    def raw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_x, train_y, test_x, test_y) with the images as float32 in [0,1] (the loaders' RawSplits)."""
        return self.train_x.float().div_(255.0), self.train_y, self.test_x.float().div_(255.0), self.test_y


# ------------------------------------------------------------------------------------------- run options


@dataclass(frozen=True)
class FolderOptions:
    skip_bad: bool = False
    cache: str | Path | None = None  # cache root; None: the default cache


_OPTIONS: contextvars.ContextVar[FolderOptions] = contextvars.ContextVar("ddbench_folder_options",
                                                                          default=FolderOptions())


@contextmanager
def folder_options(skip_bad: bool = False, cache: str | Path | None = None) -> Iterator[None]:
    """Within the block, folder loaders whose signature has no room for them (registered `loader(root, download)`)
    use these options."""
    token = _OPTIONS.set(FolderOptions(bool(skip_bad), cache))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


# ------------------------------------------------------------------------------------------------ scanning


@dataclass
class SplitScan:
    """One split folder: candidate image files per class folder, non-image files, and the listing that keys
    the cache (relative path, size, mtime in ns; -1, -1 for folders)."""

    folder: Path
    classes: dict[str, list[Path]]
    problems: list[Problem]
    listing: list[tuple[str, int, int]]


def _ignored(name: str, ignore: Sequence[str]) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES or any(fnmatch.fnmatch(name, p) for p in ignore)


def scan_split(folder: Path, ignore: Sequence[str] = (), only: Sequence[str] | None = None) -> SplitScan:
    """List `folder/<class>/**` (symlinks followed, sorted) without opening any file; `only`: just these class
    folders (a fixed class list: the others of, say, a full ImageNet folder are never listed)."""
    scan = SplitScan(folder, {}, [], [])
    if only is not None:
        class_dirs = [folder / n for n in only if (folder / n).is_dir()]
    else:
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not _ignored(p.name, ignore))
    for class_dir in class_dirs:
        files: list[Path] = []
        scan.listing.append((class_dir.name, -1, -1))
        for here, dirs, names in os.walk(class_dir, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _ignored(d, ignore))
            for name in sorted(names):
                if _ignored(name, ignore):
                    continue
                path = Path(here) / name
                try:
                    stat = path.stat()
                except OSError as err:  # a dangling link, a file removed meanwhile
                    scan.problems.append(Problem(path, f"cannot be read: {err.strerror or err}"))
                    continue
                scan.listing.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(path)
                else:
                    scan.problems.append(Problem(path, f"not an image file ({path.suffix or 'no extension'})"))
        scan.classes[class_dir.name] = files
    return scan


# ------------------------------------------------------------------------------------------------ decoding


def _native_channels(img: Any) -> int:
    if img.mode in GRAY_MODES:
        return 1
    if img.mode in ("P", "PA") and getattr(img.palette, "mode", "RGB") in ("L", "LA"):
        return 1
    return 3


def _decode_one(path: str, size: int, channels: int | None) -> tuple[np.ndarray | None, int, str]:
    """(uint8 [size,size,C] or None, the file's own channel count, why it failed or ""); C = channels, or the
    file's own count when channels is None."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # the whole file: a truncated one fails here
            native = _native_channels(img)
            img = img.convert("L" if (channels or native) == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        text = str(err).replace(f" {path!r}", "").replace(f" '{path}'", "").replace(path, "the file")
        why = " ".join(text.split())[:120] or type(err).__name__
        return None, 0, f"cannot be decoded: {why}"
    if array.ndim == 2:
        array = array[:, :, None]
    return array.copy(), native, ""


def _decode_chunk(paths: list[str], size: int, channels: int | None) -> list[tuple[np.ndarray | None, int, str]]:
    """Decode a chunk of files (a worker process's task), with PIL's truncated-file tolerance off."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return [_decode_one(p, size, channels) for p in paths]
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _workers(n_files: int) -> int:
    if n_files < PARALLEL_MIN_FILES:
        return 1
    chunks = -(-n_files // CHUNK_FILES)
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1, chunks))


def decode_files(paths: list[Path], size: int, channels: int | None) -> list[tuple[np.ndarray | None, int, str]]:
    """Decode every file (see `_decode_one`), in order: in this process for small lists, else in a few worker
    processes (fork on Linux, so workers start at once) over chunks of CHUNK_FILES files."""
    names = [str(p) for p in paths]
    workers = _workers(len(names))
    if workers > 1:
        chunks = [names[i:i + CHUNK_FILES] for i in range(0, len(names), CHUNK_FILES)]
        context = None
        if sys.platform.startswith("linux"):
            import multiprocessing

            context = multiprocessing.get_context("fork")
        log.info("decoding %d image files in %d worker processes", len(names), workers)
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                parts = pool.map(_decode_chunk, chunks, [size] * len(chunks), [channels] * len(chunks))
                return [item for part in parts for item in part]
        except (OSError, RuntimeError) as err:  # no processes on this machine (BrokenProcessPool is a RuntimeError)
            log.warning("worker processes failed (%s); decoding in this process", err)
    return _decode_chunk(names, size, channels)


# ------------------------------------------------------------------------------------------------ messages


def _listed(problems: list[Problem]) -> str:
    shown = ", ".join(str(p) for p in problems[:SHOWN])
    more = len(problems) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def bad_inputs_error(root: Path, problems: list[Problem]) -> DDBenchError:
    them = "it" if len(problems) == 1 else "them"
    return DDBenchError(
        f"{_plural(len(problems), 'bad input')} in image folder {root}: {_listed(problems)}. Remove or replace "
        f"{them}, or {SKIP_HINT}."
    )


def _warn_skipped(root: Path, skipped: list[Problem], n_classes: int, cached: bool) -> None:
    if not skipped:
        return
    files = [p for p in skipped if p.cls is None]
    classes = [p for p in skipped if p.cls is not None]
    parts = []
    if files:
        parts.append(f"skipped {_plural(len(files), 'bad file')} ({_listed(files)})")
    if classes:
        parts.append(f"dropped {_plural(len(classes), 'class')} from both splits ({_listed(classes)}), "
                     f"leaving {n_classes}")
    source = " (as cached)" if cached else ""
    log.warning("dataset.skip_bad_files=true: image folder %s%s: %s.", root, source, "; ".join(parts))


# -------------------------------------------------------------------------------------------------- reading


def _pick_test_dir(train_dir: Path, test_dirs: Sequence[Path]) -> Path:
    if not train_dir.is_dir():
        raise DDBenchError(f"image folder {train_dir} does not exist; expected {train_dir}/<class>/<image files>.")
    test_dir = next((d for d in test_dirs if d.is_dir()), None)
    if test_dir is None:
        raise DDBenchError(f"no test split next to {train_dir}: expected one of {', '.join(map(str, test_dirs))}.")
    return test_dir


def _cache_key(train: SplitScan, test: SplitScan, image_size: int, channels: int | None,
               classes: Sequence[str] | None, skip_bad: bool, keep_classes: bool, ignore: Sequence[str]
               ) -> dict[str, Any]:
    return {
        "format": FORMAT, "train": str(train.folder.resolve()), "test": str(test.folder.resolve()),
        "files": stable_hash([train.listing, test.listing], length=32), "image_size": int(image_size),
        "channels": channels, "classes": list(classes) if classes else None, "skip_bad": bool(skip_bad),
        "keep_classes": bool(keep_classes), "ignore": list(ignore),
    }


def _from_cache(found: dict[str, torch.Tensor]) -> FolderSplits:
    report = json.loads(bytes(found["report"].tolist()).decode())
    return FolderSplits(found["train_x"], found["train_y"], found["test_x"], found["test_y"], report["classes"],
                        [Problem(Path(p), why, cls) for p, why, cls in report["skipped"]])


def _to_cache(result: FolderSplits) -> dict[str, torch.Tensor]:
    report = {"classes": result.classes, "skipped": [[str(p.path), p.why, p.cls] for p in result.skipped]}
    blob = json.dumps(report).encode()
    return {"train_x": result.train_x, "train_y": result.train_y, "test_x": result.test_x, "test_y": result.test_y,
            "report": torch.tensor(list(blob), dtype=torch.uint8)}


def read_folder_splits(
    train_dir: Path, test_dirs: Sequence[Path], image_size: int, classes: Sequence[str] | None = None, *,
    channels: int | None = None, skip_bad: bool | None = None, cache: str | Path | None = None,
    keep_classes: bool = False, ignore: Sequence[str] = (),
) -> FolderSplits:
    """Read `train_dir` and the first existing of `test_dirs` (see the module docstring for what is checked).

    classes: a fixed class list (a registered subset; folders outside it are not read), else every class folder
    of train. channels: 1 or 3 to convert every file, None to take the folder's majority. skip_bad / cache: None
    takes them from `folder_options` (default: stop on bad inputs; the default cache). keep_classes: no class may
    be dropped, even with skip_bad (the dataset's class count is fixed). Returns uint8 images [N,C,S,S].
    """
    train_dir, test_dirs = Path(train_dir), [Path(d) for d in test_dirs]
    options = _OPTIONS.get()
    skip_bad = options.skip_bad if skip_bad is None else bool(skip_bad)
    cache = options.cache if cache is None else cache
    keep_classes = keep_classes or bool(classes)
    test_dir = _pick_test_dir(train_dir, test_dirs)
    root = train_dir.parent
    only = list(classes) if classes else None
    train, test = scan_split(train_dir, ignore, only), scan_split(test_dir, ignore, only)
    names = list(classes) if classes else list(train.classes)
    if not names:
        raise DDBenchError(f"no class sub-folders in {train_dir}; expected {train_dir}/<class>/<image files>.")

    from ddbench.cache import Cache

    store = Cache(cache)
    key = _cache_key(train, test, image_size, channels, classes, skip_bad, keep_classes, ignore)
    found = store.load(CACHE_KIND, key, required=("train_x", "train_y", "test_x", "test_y", "report"))
    if found is None:
        with store.building(CACHE_KIND, key):
            found = store.load(CACHE_KIND, key, required=("train_x", "train_y", "test_x", "test_y", "report"))
            if found is None:
                result = _decode_splits(root, [train, test], names, image_size, channels, skip_bad, keep_classes)
                try:
                    store.save(CACHE_KIND, key, _to_cache(result))
                except (OSError, DDBenchError) as err:
                    log.warning("could not cache the decoded image folder %s (%s); the next run decodes it again",
                                root, err)
                _warn_skipped(root, result.skipped, len(result.classes), cached=False)
                return result
    result = _from_cache(found)
    log.info("image folder %s read from the cache (%d train / %d test images)", root, len(result.train_y),
             len(result.test_y))
    _warn_skipped(root, result.skipped, len(result.classes), cached=True)
    return result


SPLIT_NAMES = ("train", "test")


def _one_per_class(problems: list[Problem]) -> list[Problem]:
    """The first problem of each class, in order (a class empty in train and missing from test is one class)."""
    first: dict[str | None, Problem] = {}
    for problem in problems:
        first.setdefault(problem.cls, problem)
    return list(first.values())


def _decode_splits(root: Path, scans: Sequence[SplitScan], names: list[str], image_size: int,
                   channels: int | None, skip_bad: bool, keep_classes: bool) -> FolderSplits:
    """Decode classes `names` of the splits (train, then test if given), collect every bad input, then stop or
    skip (module docstring). Without a test scan, test_* come back empty."""
    wanted = set(names)
    problems = [p for scan in scans for p in scan.problems if p.path.relative_to(scan.folder).parts[0] in wanted]
    class_problems: list[Problem] = []
    jobs: list[tuple[int, int, Path]] = []  # (split, class index, file)
    for split, scan in enumerate(scans):
        for index, name in enumerate(names):
            files = scan.classes.get(name)
            if files is None:
                why = f"class {name!r} is missing from the {SPLIT_NAMES[split]} split"
                class_problems.append(Problem(scan.folder / name, why, name))
            elif not files:
                class_problems.append(Problem(scan.folder / name, f"class {name!r}: the folder holds no images", name))
            jobs += [(split, index, f) for f in files or ()]
    if len(scans) > 1 and not keep_classes:
        class_problems += [Problem(scans[1].folder / n, f"class {n!r} of the test split is not in train", n)
                           for n in scans[1].classes if n not in wanted]

    log.info("decoding %d image files under %s", len(jobs), root)
    decoded = decode_files([f for _, _, f in jobs], image_size, channels)
    problems += [Problem(f, why) for (_, _, f), (_, _, why) in zip(jobs, decoded) if why]
    ok = [i for i, (array, _, _) in enumerate(decoded) if array is not None]
    if channels is None:
        counts = np.bincount([decoded[i][1] for i in ok], minlength=4)
        channels = 1 if counts[1] > counts[3] else 3
        problems += [Problem(jobs[i][2], f"{_plural(decoded[i][1], 'channel')} where most images of the folder "
                                         f"have {channels}") for i in ok if decoded[i][1] != channels]
        ok = [i for i in ok if decoded[i][1] == channels]
    good = np.zeros((len(scans), len(names)), dtype=np.int64)
    for i in ok:
        good[jobs[i][0], jobs[i][1]] += 1
    emptied = [
        Problem(scan.folder / name, f"class {name!r}: no readable images left in the {SPLIT_NAMES[split]} split",
                name)
        for split, scan in enumerate(scans) for index, name in enumerate(names)
        if scan.classes.get(name) and good[split, index] == 0
    ]
    problems.sort(key=lambda p: str(p.path))
    if (problems or class_problems) and not skip_bad:
        raise bad_inputs_error(root, _one_per_class(class_problems) + problems)
    lost = _one_per_class(class_problems + emptied)
    dropped = {p.cls for p in lost}
    if keep_classes and dropped & wanted:
        raise DDBenchError(
            f"image folder {root} lacks images of a class this dataset needs, and its class list is fixed, so "
            f"dataset.skip_bad_files cannot drop it: {_listed([p for p in lost if p.cls in wanted])}. Restore the "
            "class's images."
        )
    kept = [n for n in names if n not in dropped]
    if not kept:
        raise DDBenchError(f"no class of image folder {root} has readable images in every split: "
                           f"{_listed(lost + problems)}.")
    relabel = {names.index(n): k for k, n in enumerate(kept)}
    arrays: list[list[np.ndarray]] = [[], []]
    labels: list[list[int]] = [[], []]
    for i in ok:
        split, index, _ = jobs[i]
        if index in relabel:
            arrays[split].append(decoded[i][0])
            labels[split].append(relabel[index])
    empty = torch.zeros((0, channels, image_size, image_size), dtype=torch.uint8)
    images = [torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous() if a else empty for a in arrays]
    return FolderSplits(images[0], torch.tensor(labels[0], dtype=torch.int64), images[1],
                        torch.tensor(labels[1], dtype=torch.int64), kept, problems + lost)


def read_image_folder(folder: Path, image_size: int, classes: Sequence[str] | None = None, *,
                      channels: int | None = 3, skip_bad: bool | None = None, ignore: Sequence[str] = ()
                      ) -> FolderSplits:
    """One split folder alone (no test pairing, not cached): train_* hold its images, test_* are empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DDBenchError(f"image folder {folder} does not exist; expected {folder}/<class>/<image files>.")
    skip_bad = _OPTIONS.get().skip_bad if skip_bad is None else bool(skip_bad)
    scan = scan_split(folder, ignore, list(classes) if classes else None)
    names = list(classes) if classes else list(scan.classes)
    if not names:
        raise DDBenchError(f"no class sub-folders in {folder}; expected {folder}/<class>/<image files>.")
    result = _decode_splits(folder, [scan], names, image_size, channels, skip_bad, bool(classes))
    _warn_skipped(folder, result.skipped, len(result.classes), cached=False)
    return result
