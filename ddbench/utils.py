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


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; anything else is passed to torch.device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DDBenchError(f"device={name!r} was asked for but CUDA is not available; use device=cpu or device=auto.")
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


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for longer than an instant)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-serializable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def git_commit() -> str | None:
    """The git commit of the ddbench source tree, or None outside a checkout."""
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
        return None


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
