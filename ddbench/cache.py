"""Content-addressed cache for expensive products (experts, teachers, embeddings, distilled sets).

A product is a dict of tensors stored as safetensors under `<root>/<kind>/<key>.safetensors`, where the key is a
hash of everything that produced it. Writes are atomic, so concurrent sweep jobs never see half a file, and a
build holds a lock file (`<root>/.locks/<kind>/<key>.lock`, flock), so concurrent jobs that miss the same product
wait for the first job's build and load it instead of building it again (or, with `wait=False`, get `Busy` and
do other work meanwhile).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ddbench.utils import atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)


class Busy(Exception):
    """Another job holds the build lock of this product (raised by `building` and `get_or_create` with wait=False)."""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddbench"


class Cache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_root()

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.root / kind / f"{stable_hash(key)}.safetensors"

    def folder(self, kind: str, key: dict[str, Any]) -> Path:
        """Where a product stored as a folder (a distilled artifact) lives: `<root>/<kind>/<key>/`."""
        return self.root / kind / stable_hash(key)

    def load(self, kind: str, key: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, torch.Tensor] | None:
        """The cached product, or None when there is none. An unreadable entry, or one without the `required`
        tensors, is moved aside (named in a warning) and None is returned, so the caller recomputes it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            found = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            self.set_aside(path, kind, " ".join(str(err).split())[:160])
            return None
        missing = [name for name in required if name not in found]
        if missing:
            self.set_aside(path, kind, f"it lacks {', '.join(missing)}")
            return None
        log.info("reusing cached %s %s", kind, path)
        return found

    def set_aside(self, path: Path, kind: str, why: str) -> Path:
        """Move a corrupted cache entry to `<name>.corrupt-<id>` beside it (kept for inspection, never read)."""
        aside = path.with_name(f"{path.name}.corrupt-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another job moved it first
            return aside
        log.warning("cached %s %s is corrupted (%s); moved aside to %s and recomputing", kind, path, why, aside)
        return aside

    def save(self, kind: str, key: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save

        path = self.path(kind, key)
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"key": json.dumps(key, sort_keys=True, default=str)})
        atomic_write_bytes(path, blob)
        return path

    @contextmanager
    def building(self, kind: str, key: dict[str, Any], wait: bool = True) -> Iterator[None]:
        """Hold the build lock of (kind, key) for the block; waits (logged) while another job holds it, or with
        wait=False raises `Busy` at once.

        The lock is flock on `<root>/.locks/<kind>/<key>.lock`; the OS releases it when a job dies. Where locking is
        unavailable (no fcntl, a read-only cache folder) the block runs unlocked, as before.
        """
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            yield
            return
        path = self.root / ".locks" / kind / f"{stable_hash(key)}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError:
            yield
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise Busy(f"another job is building {kind} {path.stem}") from None
                log.info("waiting for another job that is building %s %s", kind, path.stem)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_create(
        self, kind: str, key: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]],
        required: tuple[str, ...] = (), wait: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The cached product for `key`, building and storing it on a miss (or when the entry is corrupted).
        Concurrent jobs with the same miss build it once: the others wait for the lock and load it (or, with
        wait=False, raise `Busy`)."""
        found = self.load(kind, key, required)
        if found is not None:
            return found
        with self.building(kind, key, wait):
            found = self.load(kind, key, required)  # built by another job while this one waited
            if found is not None:
                return found
            log.info("building %s (not cached yet)", kind)
            tensors = build()
            self.save(kind, key, tensors)
        return tensors
