"""Shared fixtures: datasets loaded once per session (tests must not modify them in place)."""

from __future__ import annotations

import pytest
import torch

from ddbench.data import Splits, load_dataset


@pytest.fixture(scope="session")
def digits() -> Splits:
    """The full bundled digits dataset: 1437 train / 360 test images [N,1,16,16], mean/std normalized."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_small() -> Splits:
    """digits cut to 30 train and 10 test images per class (the first ones of each class)."""
    return load_dataset("digits", max_train_per_class=30, max_test_per_class=10)


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """A cache folder of this test session's own (XDG_CACHE_HOME, also for subprocesses): tests that leave
    `paths.cache` at its default share experts, teachers and finished runs with each other, never with the user's
    cache or an earlier session, so every run of the suite computes the same things."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny ops: on a small, busy CPU a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def restore_logging():
    """Put the root logger's handlers back after each test: a Hydra run inside a test points them at that test's
    captured streams, which are closed afterwards, so a later log line (e.g. matplotlib's first font-cache
    message on a fresh machine) would print a logging traceback into another test's output."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def expert_groups(monkeypatch) -> list[list[int]]:
    """The expert indices of every train_expert_group call, in call order (the experts are still trained)."""
    import ddbench.methods.experts as experts_mod

    groups: list[list[int]] = []
    original = experts_mod.train_expert_group

    def counting(*args, **kwargs):
        groups.append(list(args[4]))
        return original(*args, **kwargs)

    monkeypatch.setattr(experts_mod, "train_expert_group", counting)
    return groups
