"""The one trainer reproduces the three training loops it replaced, and every user resolves to a recipe.

tests/data/trainer_reference.safetensors holds the weights that the former `dc` loop, kd loop and expert loop
gave on the seeded float64 cases of tests/trainer_cases.py. Every case is reproduced to float64 rounding:
bit-exact equality does not carry across CPUs (the float64 convolution and reduction kernels differ by 1 ulp
between instruction sets), and AdamW's division by sqrt(v) grows such 1e-16 differences to ~1e-10 over a few
steps, so the tolerance is rtol 1e-7 (any change of what the loops compute moves weights by far more).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.methods.experts import ExpertSpec, build_template, expert_seed
from ddbench.training import FlatModel, FlatNetworks, NetworkBatch, TrainRecipe, train
from ddbench.utils import DDBenchError, make_generator

sys.path.insert(0, str(Path(__file__).parent))
from trainer_cases import INFO, MODEL, SEEDS, LinearTeacher, data, generator, splits  # noqa: E402

REFERENCE = load_file(str(Path(__file__).parent / "data" / "trainer_reference.safetensors"))
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_nets() -> NetworkBatch:
    nets = NetworkBatch("convnet", INFO, SEEDS, CPU, vmap=False, **MODEL)
    nets.models.double()
    return nets


def assert_weights(nets: NetworkBatch, case: str, rtol: float = 1e-7) -> None:
    for i, model in enumerate(nets.models):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, REFERENCE[f"{case}.{i}.{key}"], rtol=rtol, atol=rtol * 1e-2,
                                       msg=lambda m: f"{case}: {key} of network {i}: {m}")


def dc_recipe(**changes) -> TrainRecipe:
    proto = EvalProtocol.from_dict({"epochs": 4, "lr": 0.05, "batch_size": 8, **changes})
    return proto.recipe(proto.lr)


def test_dc_protocol_reproduces_the_former_dc_loop():
    x, y, _ = data()
    nets = fresh_nets()
    train(nets, x, y, dc_recipe(), generator())
    assert_weights(nets, "dc_dsa")


def test_dc_soft_labels_on_per_network_sets_match_the_former_dc_loop():
    x, _, z = data(per_net=2)
    nets = fresh_nets()
    train(nets, x, z, dc_recipe(epochs=3, lr_decay_at=0.34, augment="none", epochs_no_aug=3), generator())
    assert_weights(nets, "dc_soft_per_net")


@pytest.mark.parametrize("case", ["kd_soft_mix", "kd_hard_adamw", "kd_teacher"])
def test_kd_recipes_reproduce_the_former_kd_loop(case):
    x, y, z = data()
    recipe, targets, teacher = {
        "kd_soft_mix": (TrainRecipe(epochs=3, batch_size=8, lr=0.05, augment="crop_flip", crop_padding=2, flip=True, mixup=0.4,
                                    cutmix=1.0, temperature=2.0, t2_scaling=True, mix_space="probs"), z, None),
        "kd_hard_adamw": (TrainRecipe(epochs=3, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.01,
                                      schedule="step", augment="dsa", cutmix=1.0), y, None),
        "kd_teacher": (TrainRecipe(epochs=2, batch_size=8, lr=0.05, augment="none", temperature=4.0,
                                   t2_scaling=True), None, LinearTeacher()),
    }[case]
    nets = fresh_nets()
    train(nets, x, targets, recipe, generator(), teacher=teacher)
    assert_weights(nets, case)


@pytest.mark.parametrize("case,spec", [
    ("expert_sgd", ExpertSpec(num_experts=2, epochs=3, lr=0.05, momentum=0.5, weight_decay=5e-4, batch_size=8)),
    ("expert_gsam", ExpertSpec(num_experts=2, epochs=2, optimizer="gsam", lr=0.05, batch_size=8)),
])
def test_experts_train_through_the_one_trainer_as_before(case, spec):
    sp = splits()
    seeds = [expert_seed(spec, i) for i in (0, 1)]
    templates = [build_template({"name": "convnet", **MODEL}, sp, s).double() for s in seeds]
    flat = FlatModel(templates[0])
    nets = FlatNetworks(flat, torch.stack([flat.flatten(t) for t in templates]), record=True)
    train(nets, sp.train.images, sp.train.labels, spec.train_recipe({}), [make_generator(s, CPU) for s in seeds])
    assert nets.trajectory.shape == REFERENCE[case].shape
    # the former loop stored float32 snapshots of its float64 training
    torch.testing.assert_close(nets.trajectory.float(), REFERENCE[case], rtol=1e-7, atol=1e-9)


def test_dc_evaluation_of_a_fixed_set_and_seed_is_unchanged(digits_small):
    rows = digits_small.train.sample_per_class(2, torch.Generator().manual_seed(0)).flatten()
    proto = EvalProtocol.from_dict({"epochs": 20, "models": ["convnet"], "num_seeds": 2, "batch_size": 8,
                                    "model_kwargs": {"convnet": {"width": 16}}})
    result = evaluate_synthetic(digits_small.train.images[rows], digits_small.train.labels[rows], digits_small, proto)
    assert result[0].accuracies == REFERENCE["dc_eval_accuracies"].tolist()


def test_protocols_resolve_to_their_recipes():
    dc = EvalProtocol.from_dict({"lr": 0.03, "epochs": 40, "schedule": "cosine", "temperature": 3.0})
    recipe = dc.recipe(0.02)
    assert (recipe.optimizer, recipe.schedule, recipe.lr, recipe.epochs) == ("sgd", "step", 0.02, 40)
    assert (recipe.temperature, recipe.t2_scaling, recipe.augment, recipe.momentum) == (1.0, False, "dsa", 0.9)
    assert EvalProtocol.from_dict({"augment": "none", "epochs_no_aug": 7}).recipe(0.1).epochs == 7
    kd = EvalProtocol.from_dict({"kind": "kd", "optimizer": "adamw", "schedule": "cosine", "temperature": 4.0,
                                 "t2_scaling": True, "mixup": 0.8, "label_source": "teacher"})
    recipe = kd.recipe(0.001)
    assert (recipe.optimizer, recipe.schedule, recipe.temperature, recipe.t2_scaling, recipe.mixup) == (
        "adamw", "cosine", 4.0, True, 0.8)
    spec = ExpertSpec.from_dict({"optimizer": "gsam", "rho": 0.05})
    recipe = spec.train_recipe({"strategy": "flip", "ranges": {"flip": 0.3}})
    assert (recipe.optimizer, recipe.rho, recipe.schedule, recipe.momentum) == ("gsam", 0.05, "constant", 0.0)
    assert (recipe.augment, recipe.dsa_strategy, recipe.dsa_ranges["flip"]) == ("dsa", "flip", 0.3)
    assert spec.train_recipe({"enabled": False}).augment == "none"


def test_expert_spec_rejects_recipe_keys_it_does_not_take():
    with pytest.raises(DDBenchError, match=r"unknown experts option\(s\) \['mixup'\].*valid options"):
        ExpertSpec.from_dict({"mixup": 0.5})
    with pytest.raises(DDBenchError, match="experts.lr must be > 0"):
        ExpertSpec.from_dict({"lr": 0})


def test_gsam_needs_flat_networks():
    x, y, _ = data()
    with pytest.raises(DDBenchError, match="gsam"):
        train(fresh_nets(), x, y, TrainRecipe(epochs=1, batch_size=8, optimizer="gsam"), generator())


def test_per_network_generators_reject_crop_flip():
    x, y, _ = data()
    with pytest.raises(DDBenchError, match="one generator per network"):
        train(fresh_nets(), x, y, TrainRecipe(epochs=1, batch_size=8), [generator(), generator()])


def test_compile_choice_follows_the_setting_device_and_run_length():
    from ddbench.training.networks import COMPILE_MIN_STEPS, compile_wanted

    assert compile_wanted(True, CPU, 1) and not compile_wanted(False, CPU, 10**6)
    assert not compile_wanted("auto", CPU, COMPILE_MIN_STEPS - 1)  # short runs (tests, smoke) stay eager
    assert not compile_wanted("auto", torch.device("cuda"), 10**6)  # GPUs train vmapped
    with pytest.raises(DDBenchError, match="compile must be one of auto, true, false"):
        compile_wanted("yes", CPU, 10)
    with pytest.raises(DDBenchError, match="eval.compile must be one of"):
        EvalProtocol.from_dict({"compile": "fast"})


def test_a_compile_failure_falls_back_to_eager_training(monkeypatch, caplog):
    def broken(module, **_):
        def call(*args):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    x, y, _ = data()
    nets = NetworkBatch("convnet", INFO, SEEDS, CPU, vmap=False, compile=True, **MODEL)
    nets.models.double()
    with caplog.at_level("WARNING"):
        train(nets, x, y, dc_recipe(), generator())
    assert "torch.compile failed" in caplog.text and nets.compiled is None
    assert_weights(nets, "dc_dsa")  # the eager result, as if compile had never been asked for


@pytest.mark.slow
def test_compiled_training_matches_eager_training():
    x, y, _ = data()
    nets = NetworkBatch("convnet", INFO, SEEDS, CPU, vmap=False, compile=True, **MODEL)
    nets.models.double()
    train(nets, x, y, dc_recipe(), generator())
    assert nets.compiled is not None  # it really ran compiled
    assert_weights(nets, "dc_dsa", rtol=1e-6)  # fused kernels round differently

