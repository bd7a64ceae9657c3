"""Fidelity fixes found by comparing with the reference code (the resnet18_ap one is in test_models.py and the
ddbench-eval artifact path in test_cli.py)."""

from __future__ import annotations

import pytest
import torch

from ddbench.cache import Cache
from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.training import TeacherConfig, init_model, load_teacher
from ddbench.utils import make_generator

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_teacher_does_not_start_from_an_evaluation_networks_weights(digits_small, tmp_path):
    # a learning rate so small that the trained teacher still holds its initial weights
    cfg = TeacherConfig(models=["mlp"], model_kwargs={"mlp": {"width": 8}}, epochs=1, lr=1e-12, momentum=0.0,
                        weight_decay=0.0, augment="none", seed=0)
    teacher = load_teacher(cfg, digits_small, CPU, Cache(tmp_path)).members[0]
    for eval_seed in EvalProtocol().seeds:  # the evaluation networks' seeds (0..4)
        student = init_model("mlp", digits_small.info, eval_seed, width=8)
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(teacher.parameters(), student.parameters()))
        assert not same, f"the teacher starts from the weights of evaluation seed {eval_seed}"


def test_the_random_subset_baseline_never_trains_with_the_learned_lr(digits_small, tmp_path):
    rows = digits_small.train.sample_per_class(1, make_generator(0)).flatten()
    images, labels = digits_small.train.images[rows], digits_small.train.labels[rows]
    proto = EvalProtocol.from_dict(dict(epochs=2, epochs_no_aug=2, augment="none", num_seeds=1, models=["mlp"],
                                        model_kwargs={"mlp": {"width": 8}}, lr=0.01, scores=["ior"]))
    cache = Cache(tmp_path)
    learned = evaluate_synthetic(images, labels, digits_small, proto, learned_lr=torch.tensor(0.003), cache=cache)[0]
    plain = evaluate_synthetic(images, labels, digits_small, proto, cache=cache)[0]
    assert (learned.lr, learned.lr_source, plain.lr) == (pytest.approx(0.003), "learned", pytest.approx(0.01))
    # one random-subset baseline, trained at the protocol's lr, serves both runs
    assert len(list((tmp_path / "baselines").glob("*.safetensors"))) == 1
    assert learned.scores["ior"] == pytest.approx(plain.scores["ior"] + learned.mean - plain.mean)
