"""A killed training run (an evaluation, a baseline) resumes from its last checkpoint and ends exactly where an
uninterrupted run ends; checkpoints of other runs, corrupted ones and finished ones are never resumed."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

import ddbench.training.checkpoint as checkpoint_mod
from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.evaluation import evaluate_synthetic
from ddbench.evaluation.protocol import EvalProtocol
from ddbench.training import NetworkBatch, TrainRecipe, train
from ddbench.training.checkpoint import Checkpointer
from ddbench.utils import DDBenchError


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", max_train_per_class=20, max_test_per_class=10)


def kill_at_save(monkeypatch, n: int) -> None:
    """The run dies right after its n-th checkpoint is written."""
    original, calls = Checkpointer.save, {"n": 0}

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save)


def checkpoints(cache_root) -> list:
    folder = cache_root / "checkpoints"
    return sorted(folder.iterdir()) if folder.is_dir() else []


RECIPES = {
    # the soft-label recipe: AdamW, cosine, crop+flip, mixup and cutmix drawn per step
    "kd": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="cosine", augment="crop_flip", crop_padding=4, flip=True,
               mixup=0.8, cutmix=1.0, temperature=4.0),
    # the dc recipe: SGD with a step decay that re-creates the optimizer (momentum reset) at epoch 2
    "dc": dict(optimizer="sgd", lr=0.01, momentum=0.9, schedule="step", lr_decay_at=0.5, lr_decay_factor=0.1,
               augment="dsa"),
}


@pytest.mark.parametrize("kind", sorted(RECIPES))
@pytest.mark.parametrize("killed_after", [1, 3])  # before and after the momentum reset
def test_a_killed_training_run_resumes_to_the_same_networks(splits, tmp_path, monkeypatch, kind, killed_after):
    recipe = TrainRecipe(epochs=4, batch_size=64, **RECIPES[kind])
    images, labels = splits.train.images, splits.train.labels
    targets = labels if kind == "dc" else torch.randn(len(labels), 10, generator=torch.Generator().manual_seed(1))

    def run(checkpoint_every: int | None) -> NetworkBatch:
        nets = NetworkBatch("convnet", splits.info, [0, 1], torch.device("cpu"), width=8, depth=2, norm="batchnorm")
        generator = torch.Generator().manual_seed(7)
        ckpt = None
        if checkpoint_every is not None:
            ckpt = Checkpointer(Cache(tmp_path), {"run": kind}, checkpoint_every, "auto", generator)
        train(nets, images, targets, recipe, generator, checkpoint=ckpt)
        return nets

    plain = run(None).state_tensors()
    kill_at_save(monkeypatch, killed_after)
    with pytest.raises(Killed):
        run(1)
    assert len(checkpoints(tmp_path)) == 1
    monkeypatch.undo()
    resumed = run(1).state_tensors()
    assert checkpoints(tmp_path) == []  # a finished run removes its checkpoint
    assert plain.keys() == resumed.keys()
    for name in plain:  # parameters, BatchNorm statistics and counters: bit for bit
        assert torch.equal(plain[name], resumed[name]), name


def protocol(**overrides) -> EvalProtocol:
    cfg = dict(epochs=6, epochs_no_aug=6, augment="dsa", num_seeds=2, models=["convnet"], batch_size=64,
               model_kwargs={"convnet": {"width": 8, "depth": 2}}, checkpoint_minutes=1e-9, compile=False)
    cfg.update(overrides)
    return EvalProtocol.from_dict(cfg)


def synthetic(splits):
    g = torch.Generator().manual_seed(3)
    return torch.randn(20, 1, 16, 16, generator=g), torch.arange(10).repeat(2)


def test_a_killed_evaluation_resumes_and_reports_the_same_accuracy_and_all_its_time(splits, tmp_path, monkeypatch,
                                                                                     caplog):
    images, labels = synthetic(splits)
    plain = evaluate_synthetic(images, labels, splits, protocol(checkpoint_minutes=0), cache=Cache(tmp_path / "a"))[0]
    assert checkpoints(tmp_path / "a") == []  # checkpoint_minutes=0 writes none

    cache = Cache(tmp_path / "b")
    kill_at_save(monkeypatch, 3)
    with pytest.raises(Killed):
        evaluate_synthetic(images, labels, splits, protocol(), cache=cache)
    (saved,) = checkpoints(cache.root)
    assert int(load_file(str(saved))["iteration"]) == 3  # epochs done
    first_part = float(load_file(str(saved))["seconds"])
    monkeypatch.undo()

    with caplog.at_level(logging.INFO, logger="ddbench"):
        resumed = evaluate_synthetic(images, labels, splits, protocol(), cache=cache)[0]
    assert "resuming from the checkpoint at epoch 3" in caplog.text
    assert resumed.accuracies == plain.accuracies
    assert resumed.seconds >= first_part
    assert checkpoints(cache.root) == []


def test_a_long_evaluation_says_in_the_log_how_far_it_is(splits, tmp_path, caplog):
    images, labels = synthetic(splits)
    with caplog.at_level(logging.INFO, logger="ddbench"):
        evaluate_synthetic(images, labels, splits, protocol(), cache=Cache(tmp_path))
    lines = [r.getMessage() for r in caplog.records if "(checkpoint saved)" in r.getMessage()]
    assert len(lines) == 5  # one per saved epoch; the last epoch ends the run instead
    assert lines[0].startswith("training convnet on 20 images with hard labels (2 seeds): epoch 1 of 6 done in ")
    assert "s left" in lines[-1]


def test_a_checkpoint_of_another_run_is_not_resumed(splits, tmp_path, monkeypatch, caplog):
    images, labels = synthetic(splits)
    cache = Cache(tmp_path)
    kill_at_save(monkeypatch, 2)
    with pytest.raises(Killed):
        evaluate_synthetic(images, labels, splits, protocol(lr=0.02), cache=cache)
    monkeypatch.undo()
    changed = {"other lr": (protocol(lr=0.03), images), "other images": (protocol(lr=0.02), images + 0.01),
               "other seeds": (protocol(lr=0.02, seed_base=5), images)}
    for what, (proto, imgs) in changed.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ddbench"):
            evaluate_synthetic(imgs, labels, splits, proto, cache=cache)
        assert "resuming" not in caplog.text, what
    assert len(checkpoints(cache.root)) == 1  # the interrupted run's own checkpoint is still there for it


def test_a_corrupted_checkpoint_is_set_aside_and_the_run_starts_over(splits, tmp_path, monkeypatch):
    images, labels = synthetic(splits)
    plain = evaluate_synthetic(images, labels, splits, protocol(checkpoint_minutes=0), cache=Cache(tmp_path / "a"))[0]
    cache = Cache(tmp_path / "b")
    kill_at_save(monkeypatch, 2)
    with pytest.raises(Killed):
        evaluate_synthetic(images, labels, splits, protocol(), cache=cache)
    monkeypatch.undo()
    (saved,) = checkpoints(cache.root)
    saved.write_bytes(b"not a checkpoint")
    again = evaluate_synthetic(images, labels, splits, protocol(), cache=cache)[0]
    assert again.accuracies == plain.accuracies
    assert [p.name.split(".corrupt-")[0] for p in checkpoints(cache.root)] == [saved.name]  # only the set-aside copy


def test_checkpoints_wait_for_their_interval(splits, tmp_path, monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(checkpoint_mod.time, "perf_counter", lambda: clock["now"])
    ckpt = Checkpointer(Cache(tmp_path), {"run": 1}, 1, "auto", torch.Generator(), every_seconds=60.0)
    assert not ckpt.due(1, 10)
    clock["now"] = 61.0
    assert ckpt.due(1, 10) and not ckpt.due(10, 10)  # never after the last epoch
    ckpt.save(1, {"x": torch.zeros(1)})
    assert not ckpt.due(2, 10)


def test_a_negative_checkpoint_interval_is_refused_with_the_fix():
    with pytest.raises(DDBenchError, match="eval.checkpoint_minutes must be >= 0"):
        EvalProtocol.from_dict({"checkpoint_minutes": -1})


def test_sigterm_saves_a_checkpoint_at_the_end_of_the_epoch_and_the_rerun_continues(splits, tmp_path, monkeypatch):
    import os
    import signal

    from ddbench.cli import app

    recipe = TrainRecipe(epochs=5, batch_size=64, **RECIPES["dc"])
    images, labels = splits.train.images, splits.train.labels

    def run(cache: Cache) -> NetworkBatch:
        nets = NetworkBatch("convnet", splits.info, [0, 1], torch.device("cpu"), width=8, depth=2, norm="batchnorm")
        generator = torch.Generator().manual_seed(7)
        ckpt = Checkpointer(cache, {"run": "term"}, 1, "auto", generator, every_seconds=1e9, unit="epoch")
        train(nets, images, labels, recipe, generator, checkpoint=ckpt)
        return nets

    plain = run(Cache(tmp_path / "plain")).state_tensors()
    original = Checkpointer.due

    def due(self, done, total):
        if done == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill`, a cluster's time limit or the board's timeout
        return original(self, done, total)

    previous = signal.signal(signal.SIGTERM, app._terminate)
    monkeypatch.setattr(Checkpointer, "due", due)
    cache = Cache(tmp_path / "killed")
    try:
        with pytest.raises(SystemExit) as stopped:
            run(cache)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143
    (saved,) = checkpoints(cache.root)
    assert int(load_file(str(saved))["iteration"]) == 2  # saved at once, not after the 1e9 s interval
    monkeypatch.undo()
    resumed = run(cache).state_tensors()
    for name in plain:
        assert torch.equal(plain[name], resumed[name]), name


def test_without_a_loop_that_can_save_sigterm_stops_at_once():
    import signal

    from ddbench.cli import app

    with pytest.raises(SystemExit) as stopped:
        app._terminate(signal.SIGTERM, None)
    assert stopped.value.code == 143
