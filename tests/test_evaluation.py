"""The shared evaluator: protocols, lock-step multi-seed training, lr schedule, soft labels, and guards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.training import NetworkBatch, TrainRecipe, train
from ddbench.training import test_accuracy as accuracy_of  # not named test_* here, or pytest collects it
from ddbench.training.losses import hard_loss, kd_loss
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


def dc_recipe(epochs: int, lr: float, batch_size: int, augment: str = "none", **changes) -> TrainRecipe:
    """The dc protocol's recipe (SGD 0.9 / wd 5e-4, step decay with momentum reset) with these settings."""
    proto = EvalProtocol.from_dict({"epochs": epochs, "epochs_no_aug": epochs, "batch_size": batch_size,
                                    "augment": augment, **changes})
    return proto.recipe(lr)


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
        train(nets, x, y, dc_recipe(3, 0.01, 8, augment="dsa"), make_generator(1))
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
        train(nets, x, y, dc_recipe(4, 0.01, len(x)), make_generator(5))
        trained[len(seeds)] = states(nets)
    alone, batch = trained[1][0], trained[3]
    assert max_gap(alone, batch[1]) < 1e-5
    assert max_gap(alone, batch[0]) > 1e-2 and max_gap(alone, batch[2]) > 1e-2


def test_initial_weights_depend_only_on_the_seed(digits_small):
    a = NetworkBatch("mlp", digits_small.info, [3, 4], CPU, vmap=False, width=8)
    torch.manual_seed(123)  # the global RNG must not matter
    b = NetworkBatch("mlp", digits_small.info, [4], CPU, vmap=True, width=8)
    assert max_gap(states(a)[1], states(b)[0]) == 0


def trained_state(info, x, y, recipe: TrainRecipe, start: dict | None = None) -> dict[str, torch.Tensor]:
    """The weights of one MLP (seed 0) trained with `recipe`, from its initialisation or from `start`."""
    nets = NetworkBatch("mlp", info, [0], CPU, vmap=False, width=8)
    if start is not None:
        nets.models[0].load_state_dict(start)
    train(nets, x, y, recipe, make_generator(0))
    return states(nets)[0]


@pytest.mark.parametrize("epochs,decay_at,decay_epoch", [(4, 0.5, 2), (3, 0.5, 1), (4, 0.75, 3)])
def test_lr_decays_once_at_the_configured_epoch_with_fresh_momentum(digits_small, epochs, decay_at, decay_epoch):
    # one full batch per epoch and no augmentation: the data order cannot matter, so training with the decay
    # equals `decay_epoch` epochs at lr, then a fresh trainer (fresh momentum) at lr x 0.1 for the rest
    x, y = tiny_set(digits_small, 1)
    decayed = trained_state(digits_small.info, x, y, dc_recipe(epochs, 0.1, len(x), lr_decay_at=decay_at))
    first = trained_state(digits_small.info, x, y, dc_recipe(decay_epoch, 0.1, len(x), lr_decay_factor=1.0))
    rest = trained_state(digits_small.info, x, y, dc_recipe(epochs - decay_epoch, 0.01, len(x), lr_decay_factor=1.0), start=first)
    assert max_gap(decayed, rest) < 1e-6
    kept = trained_state(digits_small.info, x, y, dc_recipe(epochs, 0.1, len(x), lr_decay_factor=1.0))
    assert max_gap(decayed, kept) > 1e-4


def test_no_decay_and_no_momentum_reset_when_the_factor_is_one(digits_small):
    x, y = tiny_set(digits_small, 1)
    step = trained_state(digits_small.info, x, y, dc_recipe(4, 0.1, len(x), lr_decay_factor=1.0))
    constant = trained_state(digits_small.info, x, y, TrainRecipe(epochs=4, batch_size=len(x), lr=0.1, schedule="constant", augment="none"))
    assert max_gap(step, constant) == 0


# ---------------------------------------------------------------------------------------------- soft labels


def test_soft_loss_matches_hard_for_one_hot_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=gen)  # [S,B,K]
    hard = torch.randint(5, (2, 6), generator=gen)
    soft = 100.0 * F.one_hot(hard, 5).float()
    expected = sum(F.cross_entropy(logits[s], hard[s]) for s in range(2))
    assert torch.allclose(hard_loss(logits, hard), expected, atol=1e-5)
    assert torch.allclose(kd_loss(logits, soft), expected, atol=1e-5)
    # general soft targets: KL = cross-entropy against softmax(targets) minus its entropy, batch mean, summed
    targets = torch.randn(2, 6, 5, generator=gen)
    p = targets.softmax(-1)
    manual = (-(p * logits.log_softmax(-1)).sum(-1) + (p * p.log()).sum(-1)).mean(-1).sum()
    assert torch.allclose(kd_loss(logits, targets), manual, atol=1e-5)
    assert not torch.allclose(kd_loss(logits, targets), expected, atol=1e-3)


def test_training_on_one_hot_soft_labels_equals_hard_labels(digits_small):
    x, y = tiny_set(digits_small, 1)
    trained = []
    for targets in (y, 100.0 * F.one_hot(y, 10).float()):
        nets = NetworkBatch("mlp", digits_small.info, [0], CPU, vmap=False, width=16)
        train(nets, x, targets, dc_recipe(3, 0.05, 4), make_generator(2))
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
