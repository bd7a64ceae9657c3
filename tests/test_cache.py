"""The content-addressed cache: build once, reuse by key, atomic writes, and a log line on reuse."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from ddbench.cache import Cache, default_cache_root
from ddbench.utils import DDBenchError

KEY = {"data": {"dataset": "digits", "shape": [10, 1, 16, 16]}, "model": {"name": "convnet"}, "epochs": 2}


class Builder:
    """A build function that counts its calls."""

    def __init__(self, value: float = 1.0):
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"features": torch.full((4, 3), self.value), "index": torch.arange(4)}


def test_get_or_create_builds_once_then_loads(tmp_path):
    cache = Cache(tmp_path)
    build = Builder()
    first = cache.get_or_create("embeddings", KEY, build)
    assert build.calls == 1
    path = cache.path("embeddings", KEY)
    assert path.is_file() and path.parent == tmp_path / "embeddings" and path.suffix == ".safetensors"

    second = Cache(tmp_path).get_or_create("embeddings", KEY, build)  # a fresh instance: state is on disk
    assert build.calls == 1
    assert second.keys() == first.keys()
    assert torch.equal(second["features"], first["features"]) and torch.equal(second["index"], first["index"])
    assert second["index"].dtype == torch.int64


def test_keys_address_the_content(tmp_path):
    cache = Cache(tmp_path)
    build_a, build_b = Builder(1.0), Builder(2.0)
    other = {**KEY, "epochs": 3}
    a = cache.get_or_create("embeddings", KEY, build_a)
    b = cache.get_or_create("embeddings", other, build_b)
    assert build_a.calls == build_b.calls == 1
    assert cache.path("embeddings", KEY) != cache.path("embeddings", other)
    assert not torch.equal(a["features"], b["features"])
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 2
    # key order does not matter; the kind is part of the address
    reordered = dict(reversed(list(KEY.items())))
    assert cache.path("embeddings", reordered) == cache.path("embeddings", KEY)
    assert cache.path("experts", KEY) != cache.path("embeddings", KEY)
    assert cache.load("experts", KEY) is None


def test_stored_file_records_its_key(tmp_path):
    from safetensors import safe_open

    cache = Cache(tmp_path)
    path = cache.save("embeddings", KEY, Builder()())
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["key"]) == KEY


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    cache.get_or_create("embeddings", KEY, Builder())
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [cache.path("embeddings", KEY).name]

    # a write that fails before the rename leaves neither a partial product nor a temp file
    other = {**KEY, "epochs": 9}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DDBenchError, match="cannot write .*embeddings.*: disk full"):
        cache.get_or_create("embeddings", other, Builder())
    monkeypatch.undo()
    assert not cache.path("embeddings", other).exists()
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [cache.path("embeddings", KEY).name]


def test_reuse_is_logged(tmp_path, caplog):
    cache = Cache(tmp_path)
    with caplog.at_level(logging.INFO, logger="ddbench.cache"):
        cache.get_or_create("embeddings", KEY, Builder())
        assert "reusing cached" not in caplog.text
        assert "building embeddings" in caplog.text
        caplog.clear()
        cache.get_or_create("embeddings", KEY, Builder())
    assert "reusing cached embeddings" in caplog.text
    assert str(cache.path("embeddings", KEY)) in caplog.text


def test_default_root_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / "ddbench"
    assert Cache().root == tmp_path / "ddbench"
    assert Cache(tmp_path / "x").root == tmp_path / "x"


def test_concurrent_misses_build_once_and_the_others_wait(tmp_path, caplog):
    import threading
    import time

    started = threading.Event()

    class SlowBuilder(Builder):
        def __call__(self):
            started.set()
            time.sleep(0.3)  # long enough for the second job to find the lock taken
            return super().__call__()

    build = SlowBuilder()
    results = {}

    def job(name):
        results[name] = Cache(tmp_path).get_or_create("embeddings", KEY, build)  # each job its own Cache

    first = threading.Thread(target=job, args=("first",))
    with caplog.at_level(logging.INFO):
        first.start()
        started.wait(5)
        second = threading.Thread(target=job, args=("second",))
        second.start()
        first.join(10)
        second.join(10)
    assert build.calls == 1  # the second job loaded what the first one built
    assert torch.equal(results["first"]["features"], results["second"]["features"])
    assert "waiting for another job that is building embeddings" in caplog.text
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == [Cache(tmp_path).path("embeddings", KEY).name]


def test_a_failed_build_releases_its_lock(tmp_path):
    cache = Cache(tmp_path)

    def broken():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_create("embeddings", KEY, broken)
    build = Builder()
    cache.get_or_create("embeddings", KEY, build)  # would hang if the lock were still held
    assert build.calls == 1
