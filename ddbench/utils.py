"""Small shared helpers: devices, seeding, atomic file writes, provenance."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch


class DDBenchError(RuntimeError):
    """A user-facing error: the message names what is wrong and how to fix it."""


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std with ddof=0) of a non-empty sequence, in exact float sums (numpy.std's convention)."""
    n = len(values)
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)


DEVICE_HELP = "valid devices: auto, cpu, cuda, cuda:N (N = GPU index), mps"


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' or 'mps' otherwise (checked to exist)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":", 1)[0] not in ("cpu", "cuda", "mps"):
        raise DDBenchError(f"unknown device={name!r}; {DEVICE_HELP}.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DDBenchError(f"unknown device={name!r}; {DEVICE_HELP}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DDBenchError(f"device={name!r} was asked for but CUDA is not available; use device=cpu or device=auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DDBenchError(f"device={name!r} but this machine has {torch.cuda.device_count()} GPU(s) "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them or device=cuda.")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DDBenchError(f"device={name!r} was asked for but MPS is not available; use device=cpu or device=auto.")
    return device


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on `device` seeded from the run's seed (no clock seeds anywhere)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def seed_everything(seed: int) -> None:
    """Seed torch's global generators, for code paths that do not take a Generator."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def one_line(text: str) -> str:
    """A message on one line: Hydra's tab-indented option lists become comma lists, OmegaConf's key dumps go."""
    noise = ("full_key:", "object_type=", "reference_type=")
    out: list[str] = []
    listing: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(noise):
            continue
        if raw.startswith("\t"):
            listing.append(line)
            continue
        if listing:
            out.append(", ".join(listing) + ";")
            listing = []
        if out and out[-1][-1] not in ".;:,!?(":
            out[-1] += "."
        out.append(line)
    if listing:
        out.append(", ".join(listing) + ".")
    return " ".join(out)


def current_umask() -> int:
    """The process umask (read from /proc where possible; os.umask otherwise, set back at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_new(path: str | Path, directory: bool = False) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the mode a plain open()/mkdir() would: the umask's."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def write_error(path: Path, err: OSError) -> DDBenchError:
    """A one-line error about writing `path` (the user's path, never an internal temporary name)."""
    reason = err.strerror or str(err) or type(err).__name__
    return DDBenchError(f"cannot write {path}: {reason}; choose a writable location (and check the folder exists "
                        "or can be created).")


def make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename.

    The file gets the mode a plain write would give (0666 minus the umask); the temporary file is removed on any
    failure or interruption; an OSError becomes a DDBenchError naming `path`.
    """
    path = Path(path)
    if path.is_dir():
        raise DDBenchError(f"cannot write {path}: it is a directory; give a file name.")
    make_parent(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        share_like_new(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-serializable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def tensor_digest(tensor: "torch.Tensor", length: int = 16) -> str:
    """Content hash of a tensor: its dtype, shape and values (copied to the host once)."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:length]


# The packages whose files make up ddbench's code: their *.py and *.yaml files are fingerprinted, except the
# bookkeeping files listed per package (paths or folders relative to it), which cannot change what is computed:
# record schema and rendering, the board launcher and the boards it reads (a cell's command carries all it runs),
# the leaderboard command and the Python API front end.
CODE_PACKAGES = ("ddbench", "ddbench.methods", "ddbench.evaluation", "ddbench.conf")
CODE_BOOKKEEPING = {"ddbench": ("records/", "board.py", "cli/board.py", "cli/leaderboard.py", "api.py", "api_inputs.py",
                                "api_report.py"),
                    "ddbench.conf": ("board/",)}


def code_fingerprint() -> str:
    """A hash of ddbench's own source files (Python modules and config YAML, wherever installed, committed or not;
    not CODE_BOOKKEEPING): what a cached product that depends on the code itself, such as a distilled set or a
    training checkpoint, is keyed on."""
    import importlib

    digest = hashlib.sha256()
    for name in CODE_PACKAGES:
        skipped = CODE_BOOKKEEPING.get(name, ())
        for folder in importlib.import_module(name).__path__:
            root = Path(folder)
            files = sorted(p for pattern in ("*.py", "*.yaml") for p in root.rglob(pattern) if "__pycache__" not in p.parts)
            for path in files:
                relative = path.relative_to(root).as_posix()
                if any(relative == s or (s.endswith("/") and relative.startswith(s)) for s in skipped):
                    continue
                digest.update(f"{name}/{relative}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit() -> str | None:
    """The git commit of the ddbench source tree; outside a checkout (a copy of the tree without .git, e.g. on a
    cluster node) the commit named by $DDBENCH_GIT_COMMIT, else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("DDBENCH_GIT_COMMIT") or None


def versions() -> dict[str, str]:
    """Versions of ddbench and the libraries that shape its numbers."""
    import platform

    import ddbench

    found = {"ddbench": ddbench.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "kornia", "timm", "numpy", "hydra", "omegaconf"):
        try:
            module = __import__(name)
            found[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            pass
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory (max RSS) so far, in bytes; None where the OS does not report it."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_rss_peak() -> int | None:
    """Release free heap memory, reset the peak RSS (Linux) and return the current RSS in bytes (None elsewhere).

    After it, `rss_peak_bytes() - returned` is the peak growth of resident memory of the code run in between.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def rss_peak_bytes() -> int | None:
    """Peak RSS since the last `reset_rss_peak` (Linux /proc VmHWM), in bytes; None where unavailable."""
    return _status_bytes("VmHWM")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint (bool is not an int; an int is a float; lists check their items)."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def check_option_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Each value of `values` has the type its field of dataclass `cls` declares; DDBenchError naming it otherwise."""
    import typing

    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            wanted = str(hints[name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise DDBenchError(f"{where}.{name} must be {wanted}, got {value!r}; fix {where}.{name}=... "
                               f"(defaults: conf/{where.split('.')[0]}/).")
