"""Content-addressed cache for expensive products (experts, teachers, embeddings).

A product is a dict of tensors stored as safetensors under `<root>/<kind>/<key>.safetensors`, where the key is a
hash of everything that produced it. Writes are atomic, so concurrent sweep jobs never see half a file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ddbench.utils import atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddbench"


class Cache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_root()

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.root / kind / f"{stable_hash(key)}.safetensors"

    def load(self, kind: str, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.path(kind, key)
        if not path.is_file():
            return None
        log.info("reusing cached %s %s", kind, path)
        return load_file(str(path))

    def save(self, kind: str, key: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save

        path = self.path(kind, key)
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"key": json.dumps(key, sort_keys=True, default=str)})
        atomic_write_bytes(path, blob)
        return path

    def get_or_create(
        self, kind: str, key: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The cached product for `key`, building and storing it on a miss."""
        found = self.load(kind, key)
        if found is not None:
            return found
        log.info("building %s (not cached yet)", kind)
        tensors = build()
        self.save(kind, key, tensors)
        return tensors
