"""DQ's evaluation batch rule and gradient, and DataDAM's two published settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from ddbench.cache import Cache
from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.methods.dq import logit_gradient
from ddbench.utils import DDBenchError

pytestmark = pytest.mark.usefixtures("one_thread")


def composed(*overrides: str) -> dict:
    with initialize_config_module("ddbench.conf", version_base=None):
        cfg = compose("config", overrides=list(overrides))
        return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("eval", "method")}


def test_dq_protocol_trains_small_sets_with_batch_16_like_the_reference():
    dq = EvalProtocol.from_dict(composed("eval=dq")["eval"])
    assert dq.sized_for(500, 50000).batch_size == 16  # CIFAR-10 IPC 50: 1 % kept
    assert dq.sized_for(100, 1437).batch_size == 16  # digits IPC 10: 7 %
    assert dq.sized_for(500, 1437).batch_size == 128  # digits IPC 50: 35 %
    assert dq.sized_for(5000, 50000).batch_size == 16 and dq.sized_for(5001, 50000).batch_size == 128
    off = EvalProtocol.from_dict(composed("eval=dq", "eval.small_set_fraction=null")["eval"])
    assert off.sized_for(500, 50000).batch_size == 128
    assert EvalProtocol.from_dict(composed("eval=dc")["eval"]).sized_for(10, 50000).batch_size == 256
    with pytest.raises(DDBenchError, match="small_set_fraction must be null or in"):
        EvalProtocol.from_dict(composed("eval=dq", "eval.small_set_fraction=2.0")["eval"])


def test_the_result_names_the_batch_it_trained_with(digits_small, tmp_path):
    cfg = composed("eval=dq", "eval.epochs=1", "eval.num_seeds=1", "eval.models=[mlp]",
                   "+eval.model_kwargs={mlp:{width:8}}")["eval"]
    proto = EvalProtocol.from_dict(cfg)
    train, tenth = digits_small.train, len(digits_small.train) // 10
    small = evaluate_synthetic(train.images[:tenth], train.labels[:tenth], digits_small, proto, cache=Cache(tmp_path))
    assert small[0].batch_size == 16  # 10 % of the train split
    more = evaluate_synthetic(train.images[:tenth + 10], train.labels[:tenth + 10], digits_small, proto,
                              cache=Cache(tmp_path))
    assert more[0].batch_size == 128


def test_both_dq_gradients_are_the_autograd_gradients_of_their_losses():
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for kind, loss in (("plain", lambda t: F.cross_entropy(t, y, reduction="sum")),
                       ("reference", lambda t: F.cross_entropy(t.softmax(1), y, reduction="sum"))):
        leaf = z.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(loss(leaf), leaf)
        assert torch.allclose(logit_gradient(z, y, kind).double(), expected, atol=1e-6), kind


def test_the_true_class_gradient_survives_a_large_margin_in_float32():
    z = torch.tensor([[40.0, 0.0, 0.0]])
    naive = z.softmax(1) - F.one_hot(torch.tensor([0]), 3)
    assert naive[0, 0] == 0  # 1 - p_y rounds to zero
    delta = logit_gradient(z, torch.tensor([0]))
    assert delta[0, 0] < 0 and torch.isclose(delta.sum(), torch.tensor(0.0), atol=1e-30)


def test_datadam_runs_the_papers_setting_and_the_codes_from_one_command_each():
    paper = composed("experiment=datadam_paper", "dataset=digits")["method"]
    code = composed("experiment=datadam_code", "dataset=digits")["method"]
    assert (paper["name"], paper["power"], paper["iterations"], paper["norm"]) == ("datadam", 4.0, 8000,
                                                                                   "instancenorm")
    assert (code["name"], code["power"], code["iterations"], code["norm"]) == ("datadam", 1.0, 20000, "batchnorm")
