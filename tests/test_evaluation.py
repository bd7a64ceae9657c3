"""The shared evaluator: protocols, lock-step multi-seed training, lr schedule, soft labels, and guards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.augment import DSA
from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.training import NetworkBatch, train_networks
from ddbench.training import test_accuracy as accuracy_of  # not named test_* here, or pytest collects it
from ddbench.training.trainer import classification_loss
from ddbench.models import unstack_state
from ddbench.utils import DDBenchError, make_generator

CPU = torch.device("cpu")


def tiny_set(splits, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc real training images per class, class-major, with hard labels."""
    rows = splits.train.sample_per_class(ipc, make_generator(seed)).flatten()
    return splits.train.images[rows], splits.train.labels[rows]


def states(nets: NetworkBatch) -> list[dict[str, torch.Tensor]]:
    """One state_dict per network, whether the batch is vmapped or a list."""
    if nets.vmapped:
        return [unstack_state(nets.params, nets.buffers, i) for i in range(len(nets))]
    return [{k: v.detach() for k, v in m.state_dict().items()} for m in nets.models]


def max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def fast_protocol(**overrides) -> EvalProtocol:
    cfg = dict(epochs=2, epochs_no_aug=2, augment="none", num_seeds=1, models=["mlp"],
               model_kwargs={"mlp": {"width": 16}}, batch_size=64)
    cfg.update(overrides)
    return EvalProtocol.from_dict(cfg)


# --------------------------------------------------------------------------------------------- protocol


def test_protocol_rejects_unknown_keys_listing_the_valid_ones():
    with pytest.raises(DDBenchError) as err:
        EvalProtocol.from_dict({"epochs": 5, "learning_rate": 0.1})
    message = str(err.value)
    assert "learning_rate" in message
    for valid in ("epochs", "lr", "lr_decay_at", "models", "num_seeds", "vmap"):
        assert repr(valid) in message
    with pytest.raises(DDBenchError, match="augment"):
        EvalProtocol.from_dict({"augment": "autoaugment"})
    with pytest.raises(DDBenchError, match="num_seeds"):
        EvalProtocol.from_dict({"num_seeds": 0})


def test_protocol_seeds_and_epochs():
    proto = EvalProtocol.from_dict({"num_seeds": 3, "seed_base": 10, "epochs": 7, "epochs_no_aug": 4,
                                    "models": ("convnet",), "model_kwargs": {"convnet": {"width": 8}}})
    assert proto.seeds == [10, 11, 12]
    assert proto.train_epochs == 7
    assert EvalProtocol.from_dict({"augment": "none", "epochs_no_aug": 4}).train_epochs == 4
    assert proto.models == ["convnet"] and proto.to_dict()["model_kwargs"] == {"convnet": {"width": 8}}


# ------------------------------------------------------------------------------------ lock-step training


def test_vmapped_and_looped_training_are_identical(digits_small):
    # several steps per epoch, a partial last batch, and DSA drawn per network: the lock-step path and the
    # one-network-at-a-time path must see the same data and augmentations and end with the same weights
    x, y = tiny_set(digits_small, 2)
    results = {}
    for vmap in (True, False):
        nets = NetworkBatch("convnet", digits_small.info, [0, 1], CPU, vmap=vmap, width=8)
        assert nets.vmapped is vmap
        train_networks(nets, x, y, epochs=3, lr=0.01, batch_size=8, generator=make_generator(1), augment=DSA())
        results[vmap] = (states(nets), accuracy_of(nets, digits_small.test))
    (vm_states, vm_acc), (loop_states, loop_acc) = results[True], results[False]
    for a, b in zip(vm_states, loop_states):
        assert max_gap(a, b) < 1e-4
    assert torch.allclose(vm_acc, loop_acc)
    assert max_gap(vm_states[0], vm_states[1]) > 1e-2  # the two seeds are different networks


def test_a_network_trains_the_same_alone_and_in_a_batch(digits_small):
    # One full batch per epoch and no augmentation, so the data each network sees does not depend on how many
    # networks share the generator; then seed 1 must end identical alone and as the middle of three (stacked
    # parameters under one optimizer; the looped path equals the stacked one by the test above).
    x, y = tiny_set(digits_small, 2)
    trained = {}
    for seeds in ([1], [0, 1, 2]):
        nets = NetworkBatch("convnet", digits_small.info, seeds, CPU, vmap=True, width=8)
        train_networks(nets, x, y, epochs=4, lr=0.01, batch_size=len(x), generator=make_generator(5))
        trained[len(seeds)] = states(nets)
    alone, batch = trained[1][0], trained[3]
    assert max_gap(alone, batch[1]) < 1e-5
    assert max_gap(alone, batch[0]) > 1e-2 and max_gap(alone, batch[2]) > 1e-2


def test_initial_weights_depend_only_on_the_seed(digits_small):
    a = NetworkBatch("mlp", digits_small.info, [3, 4], CPU, vmap=False, width=8)
    torch.manual_seed(123)  # the global RNG must not matter
    b = NetworkBatch("mlp", digits_small.info, [4], CPU, vmap=True, width=8)
    assert max_gap(states(a)[1], states(b)[0]) == 0


class RecordingSGD(torch.optim.SGD):
    """torch.optim.SGD that logs when it is created (global step count and lr) and its state at first step."""

    log: list[dict] = []
    steps = 0

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        RecordingSGD.log.append({"at_step": RecordingSGD.steps, "lr": kwargs["lr"], "state_at_first_step": None})
        self._entry = RecordingSGD.log[-1]

    def step(self, closure=None):
        if self._entry["state_at_first_step"] is None:
            self._entry["state_at_first_step"] = len(self.state)
        RecordingSGD.steps += 1
        return super().step(closure)


@pytest.fixture
def recording_sgd(monkeypatch):
    RecordingSGD.log, RecordingSGD.steps = [], 0
    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    return RecordingSGD


@pytest.mark.parametrize("epochs,decay_at,decay_epoch", [(10, 0.5, 5), (5, 0.5, 2), (4, 0.75, 3)])
def test_lr_decays_once_at_the_configured_epoch_with_fresh_momentum(digits_small, recording_sgd, epochs, decay_at,
                                                                    decay_epoch):
    x, y = tiny_set(digits_small, 1)  # 10 images, batch 4: 3 steps per epoch
    nets = NetworkBatch("mlp", digits_small.info, [0, 1], CPU, vmap=False, width=8)
    train_networks(nets, x, y, epochs=epochs, lr=0.1, batch_size=4, generator=make_generator(0),
                   lr_decay_at=decay_at, lr_decay_factor=0.1)
    log = recording_sgd.log
    assert [entry["at_step"] for entry in log] == [0, 3 * decay_epoch]
    assert log[0]["lr"] == pytest.approx(0.1) and log[1]["lr"] == pytest.approx(0.01)
    assert log[1]["state_at_first_step"] == 0  # momentum buffers start afresh after the decay
    assert recording_sgd.steps == 3 * epochs


def test_no_decay_when_the_factor_is_one(digits_small, recording_sgd):
    x, y = tiny_set(digits_small, 1)
    nets = NetworkBatch("mlp", digits_small.info, [0], CPU, vmap=False, width=8)
    train_networks(nets, x, y, epochs=4, lr=0.1, batch_size=10, generator=make_generator(0), lr_decay_factor=1.0)
    assert [entry["lr"] for entry in recording_sgd.log] == [0.1]


# ---------------------------------------------------------------------------------------------- soft labels


def test_soft_cross_entropy_matches_hard_for_one_hot_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=gen)  # [S,B,K]
    hard = torch.randint(5, (2, 6), generator=gen)
    soft = 100.0 * F.one_hot(hard, 5).float()
    expected = sum(F.cross_entropy(logits[s], hard[s]) for s in range(2))
    assert torch.allclose(classification_loss(logits, hard), expected, atol=1e-5)
    assert torch.allclose(classification_loss(logits, soft), expected, atol=1e-5)
    # general soft targets: cross-entropy against softmax(targets), mean over the batch, summed over networks
    targets = torch.randn(2, 6, 5, generator=gen)
    manual = -(targets.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean(-1).sum()
    assert torch.allclose(classification_loss(logits, targets), manual, atol=1e-5)
    assert not torch.allclose(classification_loss(logits, targets), expected, atol=1e-3)


def test_training_on_one_hot_soft_labels_equals_hard_labels(digits_small):
    x, y = tiny_set(digits_small, 1)
    trained = []
    for targets in (y, 100.0 * F.one_hot(y, 10).float()):
        nets = NetworkBatch("mlp", digits_small.info, [0], CPU, vmap=False, width=16)
        train_networks(nets, x, targets, epochs=3, lr=0.05, batch_size=4, generator=make_generator(2))
        trained.append(states(nets)[0])
    assert max_gap(*trained) < 1e-5


def test_evaluate_reports_soft_label_type(digits_small):
    x, y = tiny_set(digits_small, 1)
    result = evaluate_synthetic(x, 5.0 * F.one_hot(y, 10).float(), digits_small, fast_protocol())[0]
    assert result.label_type == "soft"
    assert evaluate_synthetic(x, y, digits_small, fast_protocol())[0].label_type == "hard"


# ------------------------------------------------------------------------------------------- learned lr


def test_learned_lr_is_used_when_the_protocol_allows_it(digits_small):
    x, y = tiny_set(digits_small, 1)
    result = evaluate_synthetic(x, y, digits_small, fast_protocol(lr=0.01), learned_lr=torch.tensor(0.003))[0]
    assert result.lr == pytest.approx(0.003)
    ignored = evaluate_synthetic(x, y, digits_small, fast_protocol(lr=0.01, learned_lr=False),
                                 learned_lr=torch.tensor(0.003))[0]
    assert ignored.lr == pytest.approx(0.01)
    assert evaluate_synthetic(x, y, digits_small, fast_protocol(lr=0.02))[0].lr == pytest.approx(0.02)


@pytest.mark.parametrize("bad", [math.nan, -0.01, 0.0, math.inf])
def test_bad_learned_lr_is_refused(digits_small, bad):
    x, y = tiny_set(digits_small, 1)
    with pytest.raises(DDBenchError) as err:
        evaluate_synthetic(x, y, digits_small, fast_protocol(), learned_lr=torch.tensor(bad))
    message = str(err.value)
    assert "learned lr" in message and "positive finite" in message and "eval.learned_lr=false" in message


def test_diverging_training_raises_instead_of_reporting(digits_small):
    x, y = tiny_set(digits_small, 1)
    with pytest.raises(DDBenchError, match="diverged"):
        evaluate_synthetic(x, y, digits_small, fast_protocol(lr=1e6, epochs_no_aug=5))
    with pytest.raises(DDBenchError, match="diverged"):
        evaluate_synthetic(x, y, digits_small, fast_protocol(epochs_no_aug=5), learned_lr=torch.tensor(1e6))


# ---------------------------------------------------------------------------------------------- fidelity


def test_real_images_at_ipc10_beat_chance_clearly(digits):
    x, y = tiny_set(digits, 10)
    protocol = EvalProtocol.from_dict(dict(
        epochs_no_aug=5, augment="none", batch_size=10, num_seeds=1, models=["convnet"],
        model_kwargs={"convnet": {"width": 16}},
    ))
    result = evaluate_synthetic(x, y, digits, protocol)[0]
    assert (result.model, result.seeds, result.label_type) == ("convnet", [0], "hard")
    assert len(result.accuracies) == 1 and result.seconds > 0
    assert result.mean > 0.5  # chance is 0.1; ~0.85 is typical
