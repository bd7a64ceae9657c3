"""Cached products never outlive the network that made them: teachers, embeddings and experts follow the
network's layout, evaluation baselines (the whole-dataset row) follow the code."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from ddbench.cache import Cache
from ddbench.evaluation import EvalProtocol, reference_results
from ddbench.models import register_model
from ddbench.models.zoo import MLP
from ddbench.training import TeacherConfig, load_teacher, train_embeddings

CPU = torch.device("cpu")
_names = itertools.count()

pytestmark = pytest.mark.usefixtures("one_thread")


def probe_model() -> tuple[str, dict[str, int]]:
    """A new model name whose layout (its hidden depth) the test changes between two runs, as an edit of an
    architecture's code would; the name and its options stay the same."""
    layout = {"depth": 1}
    name = f"layout_probe_{next(_names)}"

    @register_model(name)
    def build(channels: int, num_classes: int, image_size: int) -> nn.Module:
        return MLP(channels, num_classes, image_size, width=8, depth=layout["depth"])

    return name, layout


def stored(root: Path, kind: str) -> int:
    return len(list((root / kind).glob("*.safetensors")))


def test_a_teacher_is_trained_again_when_its_architecture_changes(digits_small, tmp_path):
    name, layout = probe_model()
    cfg = TeacherConfig(models=[name], epochs=1, batch_size=64)
    first = load_teacher(cfg, digits_small, CPU, Cache(tmp_path)).summary()
    load_teacher(cfg, digits_small, CPU, Cache(tmp_path))
    assert stored(tmp_path, "teachers") == 1  # same layout: reused

    layout["depth"] = 2
    teacher = load_teacher(cfg, digits_small, CPU, Cache(tmp_path))
    assert stored(tmp_path, "teachers") == 2  # new layout: trained again, not loaded into the old one
    assert len(teacher.members[0].features) == 4 and first["models"] == [name]


def test_embeddings_follow_the_architecture(digits_small, tmp_path):
    name, layout = probe_model()
    train_embeddings(digits_small, {"name": name}, 1, 0, CPU, Cache(tmp_path))
    train_embeddings(digits_small, {"name": name}, 1, 0, CPU, Cache(tmp_path))
    assert stored(tmp_path, "embeddings") == 1
    layout["depth"] = 2
    train_embeddings(digits_small, {"name": name}, 1, 0, CPU, Cache(tmp_path))
    assert stored(tmp_path, "embeddings") == 2


def test_expert_keys_follow_the_architecture(digits_small):
    from ddbench.methods.experts import ExpertSpec, expert_key

    name, layout = probe_model()
    spec = ExpertSpec(num_experts=1, epochs=1)
    before = expert_key(digits_small, {"name": name}, spec, None, 0)
    assert expert_key(digits_small, {"name": name}, spec, None, 0) == before
    layout["depth"] = 2
    assert expert_key(digits_small, {"name": name}, spec, None, 0) != before


def test_the_whole_dataset_row_is_computed_again_when_the_code_changes(digits_small, tmp_path, monkeypatch):
    import ddbench.evaluation.evaluate as evaluate

    proto = EvalProtocol.from_dict({"epochs": 1, "num_seeds": 1, "models": ["mlp"], "checkpoint_minutes": 0,
                                    "model_kwargs": {"mlp": {"width": 8}}, "full_data": {"epochs": 1}})
    reference_results(digits_small, proto, Cache(tmp_path))
    reference_results(digits_small, proto, Cache(tmp_path))
    assert stored(tmp_path, "baselines") == 1
    monkeypatch.setattr(evaluate, "code_fingerprint", lambda: "edited")
    reference_results(digits_small, proto, Cache(tmp_path))
    assert stored(tmp_path, "baselines") == 2
