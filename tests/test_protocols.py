"""Named evaluation protocols: each conf/eval/*.yaml runs under smoke and trains on the loss and targets it names."""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from ddbench import pipeline
from ddbench.cache import Cache
from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.training import NetworkBatch
from ddbench.evaluation import evaluate as evaluate_module
from ddbench.training import train
from ddbench.training.losses import kd_loss
from ddbench.training.recipe import TrainRecipe
from ddbench.training.trainer import lr_at
from ddbench.evaluation.selection import holdout_split
from ddbench.training.teacher import load_teacher
from ddbench.training.transforms import cutmix_images, mix_targets, random_crop_flip
from ddbench.models import unstack_state
from ddbench.utils import DDBenchError, make_generator

CPU = torch.device("cpu")
EVAL_CONFIGS = sorted(p.name[:-5] for p in (importlib.resources.files("ddbench.conf") / "eval").iterdir()
                      if p.name.endswith(".yaml"))
CODE = 6.0  # stored logits c·e_n: sample n's logits are CODE on class n, 0 elsewhere



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke_config():
    """plain smoke config of an eval protocol (dataset digits), as ddbench-run would resolve it."""
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        def resolved(name: str, *overrides: str) -> dict:
            cfg = compose(config_name="config", overrides=[
                f"eval={name}", "smoke=true", "dataset=digits", "method=random", "paths.output=/tmp/unused", *overrides])
            return pipeline.resolved_config(cfg)

        yield resolved


@pytest.fixture(scope="module")
def smoke_splits(smoke_config):
    return pipeline.load_splits(smoke_config("dc"), CPU)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the module: the kd smoke teacher is trained once (by whichever test needs it first)."""
    return tmp_path_factory.mktemp("cache")


def one_per_class(splits, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rows = splits.train.sample_per_class(1, make_generator(seed)).flatten()
    return splits.train.images[rows], splits.train.labels[rows]


# ---------------------------------------------------------------------------------------- CLI end to end


def test_ddbench_run_kd_smoke_writes_a_soft_kd_record(tmp_path, shared_cache):
    exe = Path(sys.executable).with_name("ddbench-run")
    command = [str(exe) if exe.exists() else "ddbench-run", "method=random", "dataset=digits", "ipc=10", "eval=kd",
               "smoke=true", "smoke_settings.eval.num_seeds=1", "progress=false", f"paths.records={tmp_path / 'records'}", f"paths.cache={shared_cache}",
               f"hydra.run.dir={tmp_path / 'run'}"]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = list((tmp_path / "records").rglob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["protocol"] == "kd" and record["label_type"] == "soft" and record["eval_model"] == "convnet"
    assert {"hlr", "ior", "lrs"} <= set(record["scores"]) and 0 <= record["scores"]["lrs"] <= 1
    assert record["score_seconds"] > 0  # HLR's hard-label run of this set, at least
    assert "| kd | convnet | soft labels |" in done.stdout
    assert list((shared_cache / "teachers").glob("*.safetensors")), "the teacher goes to the cache"


# ---------------------------------------------------------------------------- every protocol, under smoke


def check_hard_dc(result, proto, recipe, ev, artifact):
    assert result.label_type == "hard" and proto.kind == "dc"
    assert ev.label_mode(proto, artifact[1]) == "hard"  # cross-entropy on the hard labels
    assert (recipe.optimizer, recipe.schedule, recipe.augment, recipe.temperature) == ("sgd", "step", "dsa", 1.0)


def check_dc(result, proto, recipe, ev, artifact):
    check_hard_dc(result, proto, recipe, ev, artifact)
    assert result.lr == pytest.approx(0.02) and result.lr_source == "learned"  # dc takes a learned lr
    assert recipe.batch_size == 256 and recipe.lr_decay_at == 0.5 and recipe.lr_decay_factor == 0.1


def check_mtt(result, proto, recipe, ev, artifact):
    check_dc(result, proto, recipe, ev, artifact)
    assert proto.models == ["convnet"]


def check_datm(result, proto, recipe, ev, artifact):
    assert result.label_type == "soft" and result.lr == pytest.approx(0.02) and result.lr_source == "learned"
    mode = ev.label_mode(proto, artifact[1])
    assert mode == "stored" and torch.equal(ev.targets(mode, *artifact), artifact[1])  # the learned logits
    assert recipe.batch_size == 128 and recipe.temperature == 1.0 and not recipe.t2_scaling


def check_datadam(result, proto, recipe, ev, artifact):
    check_hard_dc(result, proto, recipe, ev, artifact)
    assert result.model == "convnet_bn" and result.lr == pytest.approx(0.01) and result.lr_source == "protocol"
    assert recipe.batch_size == 64
    full = EvalProtocol.from_dict({k: v for k, v in proto.to_dict().items() if k != "smoke"} | {"epochs": 1800})
    assert int(full.train_epochs * full.lr_decay_at) == 900


def check_kd(result, proto, recipe, ev, artifact):
    assert result.label_type == "soft" and ev.label_mode(proto, artifact[1]) == "teacher"
    assert (recipe.temperature, recipe.t2_scaling, recipe.optimizer, recipe.schedule) == (4.0, True, "adamw", "cosine")
    assert {"hlr", "ior", "lrs"} <= set(result.scores)


def check_cda(result, proto, recipe, ev, artifact):
    assert result.label_type == "soft" and ev.label_mode(proto, artifact[1]) == "teacher"
    assert (recipe.temperature, recipe.t2_scaling) == (30.0, False)
    assert recipe.mixup == 0.8 and recipe.optimizer == "adamw" and recipe.augment == "crop_flip"
    assert recipe.lr == pytest.approx(1e-3) and recipe.weight_decay == pytest.approx(0.01)
    assert proto.teacher_bn == "train" and result.teacher["bn"] == "train"  # the reference relabel script's BN mode


def check_infer(result, proto, recipe, ev, artifact):
    mode = ev.label_mode(proto, artifact[1])
    assert result.label_type == "soft" and mode == "stored"  # static: the teacher labels the images once
    assert torch.equal(ev.targets(mode, *artifact), torch.eye(len(artifact[0])) * CODE)
    assert recipe.mixup == 0.8 and recipe.mix_space == "logits" and recipe.batch_size == 64
    assert (recipe.temperature, recipe.t2_scaling) == (30.0, False)


def check_infer_dyn(result, proto, recipe, ev, artifact):
    assert result.label_type == "soft" and ev.label_mode(proto, artifact[1]) == "teacher"  # the ensemble, online
    assert (recipe.temperature, recipe.t2_scaling) == (30.0, False)
    assert recipe.mixup == 0.8 and recipe.batch_size == 64 and recipe.optimizer == "adamw"


def check_dq(result, proto, recipe, ev, artifact):
    assert result.label_type == "hard" and ev.label_mode(proto, artifact[1]) == "hard"
    assert recipe.optimizer == "sgd" and recipe.schedule == "cosine" and recipe.lr == pytest.approx(0.1)
    assert recipe.augment == "crop_flip" and recipe.batch_size == 128


CHECKS = {"dc": check_dc, "quick": check_dc, "mtt": check_mtt, "datm": check_datm, "datadam": check_datadam,
          "kd": check_kd, "cda": check_cda, "infer": check_infer, "infer_dyn": check_infer_dyn, "dq": check_dq}


class CodeTeacher:
    """A stand-in teacher for static labels: logits CODE·e_n for the n-th image it is asked about."""

    def __init__(self, images):
        self.images = images
        self.asked = 0

    def logits(self, images):
        assert torch.equal(images, self.images), "static labels are computed on the un-augmented images"
        self.asked += 1
        return torch.eye(len(images)) * CODE

    def __call__(self, x):
        raise AssertionError("a static-label protocol must not relabel batches online")

    def summary(self):
        return {"models": ["code"], "test_accuracy": None, "train_accuracy": None}


def test_every_eval_config_has_a_check():
    assert set(EVAL_CONFIGS) == set(CHECKS), "add a check for each protocol in conf/eval"


@pytest.mark.parametrize("name", EVAL_CONFIGS)
def test_protocol_runs_under_smoke_with_its_loss_and_targets(name, smoke_config, smoke_splits, shared_cache,
                                                              monkeypatch):
    cfg = smoke_config(name)
    assert cfg["eval"]["name"] == name and cfg["eval"]["num_seeds"] == 2 and cfg["eval"]["epochs"] == 10
    assert cfg["eval"]["teacher"]["epochs"] == 2 and cfg["eval"]["full_data"]["epochs"] == 1
    proto = EvalProtocol.from_dict(cfg["eval"])
    images, labels = one_per_class(smoke_splits)
    lr = None
    if name == "datm":
        labels = torch.randn(len(labels), 10, generator=make_generator(3)) + 4 * F.one_hot(labels, 10)
    if name in ("dc", "quick", "mtt", "datm"):
        lr = torch.tensor(0.02)
    if name == "infer":
        fake = CodeTeacher(images)
        monkeypatch.setattr(evaluate_module, "load_teacher", lambda *args, **kwargs: fake)
    results = evaluate_synthetic(images, labels, smoke_splits, proto, lr, cache=Cache(shared_cache), ipc=1)
    assert len(results) == 1 and results[0].protocol == name
    assert len(results[0].accuracies) == 2 and all(0 <= a <= 1 for a in results[0].accuracies)
    ev = evaluate_module.Evaluator(smoke_splits, proto, Cache(shared_cache))
    CHECKS[name](results[0], proto, proto.recipe(results[0].lr), ev, (images, labels))
    if name == "infer":
        assert fake.asked >= 1


class RecordingNets:
    """A network batch that records every training batch it is given (x [S,B,C,H,W])."""

    def __init__(self, nets: NetworkBatch):
        self.nets, self.name, self.inputs = nets, nets.name, []

    def __len__(self):
        return len(self.nets)

    def parameters(self):
        return self.nets.parameters()

    def train(self, mode=True):
        self.nets.train(mode)
        return self

    def __call__(self, x):
        self.inputs.append(x.detach().clone())
        return self.nets(x)


@pytest.mark.parametrize("mixup,cutmix", [(0.0, 0.0), (0.8, 1.0)])
def test_an_online_teacher_labels_exactly_the_batch_the_students_see(smoke_splits, mixup, cutmix):
    images, _ = one_per_class(smoke_splits)
    asked = []

    def teacher(x):
        asked.append(x.detach().clone())
        return x.flatten(1)[:, :10] * 3

    nets = RecordingNets(NetworkBatch("mlp", smoke_splits.info, [0, 1], CPU, vmap=False, width=8))
    recipe = TrainRecipe(epochs=2, batch_size=4, lr=0.05, augment="crop_flip", crop_padding=4, flip=True, mixup=mixup, cutmix=cutmix,
                         temperature=4.0, t2_scaling=True)
    train(nets, images, None, recipe, make_generator(3), teacher=teacher)
    assert len(asked) == len(nets.inputs) == 2 * 3  # 10 images, batch 4: 3 steps per epoch
    for seen, labelled in zip(nets.inputs, asked):
        assert torch.equal(seen.flatten(0, 1), labelled)


def test_stored_label_source_needs_soft_labels(smoke_splits):
    proto = EvalProtocol.from_dict({"kind": "kd", "label_source": "stored", "models": ["mlp"], "num_seeds": 1})
    images, labels = one_per_class(smoke_splits)
    with pytest.raises(DDBenchError, match="label_source=static"):
        evaluate_synthetic(images, labels, smoke_splits, proto)
    with pytest.raises(DDBenchError, match="kind=kd"):
        EvalProtocol.from_dict({"label_source": "teacher"})


# ------------------------------------------------------------------------------------------ the pieces


def test_kl_with_t2_scaling_matches_a_hand_computation():
    student = torch.tensor([[[1.0, 2.0, 0.5]]])
    target = torch.tensor([[[2.0, 0.0, 1.0]]])
    T = 2.0
    p = torch.softmax(target[0, 0] / T, -1)  # teacher distribution
    log_q = torch.log_softmax(student[0, 0] / T, -1)
    by_hand = float((p * (p.log() - log_q)).sum())
    # the same with plain arithmetic: p = softmax([1, 0, 0.5]), q = softmax([0.5, 1, 0.25])
    ep = [math.exp(v) for v in (1.0, 0.0, 0.5)]
    eq = [math.exp(v) for v in (0.5, 1.0, 0.25)]
    pp = [v / sum(ep) for v in ep]
    qq = [v / sum(eq) for v in eq]
    arithmetic = sum(a * math.log(a / b) for a, b in zip(pp, qq))
    assert by_hand == pytest.approx(arithmetic, rel=1e-6)
    assert float(kd_loss(student, target, T, t2_scaling=False)) == pytest.approx(arithmetic, rel=1e-5)
    assert float(kd_loss(student, target, T, t2_scaling=True)) == pytest.approx(4 * arithmetic, rel=1e-5)
    # batch mean per network, summed over networks; zero when the student equals the teacher
    two = torch.cat([student, target]).expand(2, 2, 3).clone()
    assert float(kd_loss(two, torch.stack([target[0], target[0]]).expand(2, 2, 3), T)) == pytest.approx(
        arithmetic, rel=1e-5)
    assert float(kd_loss(target, target, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_interpolated_targets_are_the_mix_of_stored_logits():
    z = torch.randn(2, 4, 5, generator=make_generator(0))  # [S, B, K]
    lam = torch.tensor([0.3, 0.9])
    perm = torch.tensor([[1, 0, 3, 2], [2, 3, 0, 1]])
    mixed = mix_targets(z, lam, perm, "logits")
    for s in range(2):
        for i in range(4):
            expect = lam[s] * z[s, i] + (1 - lam[s]) * z[s, perm[s, i]]
            assert torch.allclose(mixed[s, i], expect, atol=1e-6)
    probs = mix_targets(z, lam, perm, "probs", temperature=2.0)
    want = lam[0] * (z[0, 0] / 2).softmax(-1) + (1 - lam[0]) * (z[0, 1] / 2).softmax(-1)
    assert torch.allclose((probs[0, 0] / 2).softmax(-1), want, atol=1e-6)


def test_crop_flip_cutmix_and_cosine():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    a = random_crop_flip(x, make_generator(5), padding=2)
    b = random_crop_flip(x, make_generator(5), padding=2)
    assert torch.equal(a, b) and a.shape == x.shape  # seeded from the generator
    for n in range(2):  # every output is a shifted (maybe mirrored) window of the zero-padded input
        padded = F.pad(x[n], (2, 2, 2, 2))
        windows = [padded[:, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a[n], w) or torch.equal(a[n], w.flip(-1)) for w in windows)
    outs = torch.stack([random_crop_flip(x, make_generator(s), padding=2) for s in range(20)])
    assert len({tuple(o[0].flatten().tolist()) for o in outs}) > 5  # parameters vary per draw
    imgs = torch.zeros(2, 3, 1, 8, 8)
    imgs[:, 1] = 1.0
    perm = torch.tensor([[1, 2, 0], [1, 2, 0]])
    mixed, lam = cutmix_images(imgs, torch.tensor([0.75, 1.0]), perm, make_generator(0))
    pasted = (mixed[0, 0] == 1).float().mean()  # sample 0 got a box of sample 1 (all ones)
    assert float(lam[0]) == pytest.approx(1 - float(pasted)) and float(lam[1]) == 1.0
    assert torch.equal(mixed[1], imgs[1])
    recipe = TrainRecipe(epochs=4, batch_size=8, lr=0.2, schedule="cosine")
    assert lr_at(recipe, 0, 40, 10) == pytest.approx(0.2)
    assert lr_at(recipe, 20, 40, 10) == pytest.approx(0.1)
    assert lr_at(recipe, 40, 40, 10) == pytest.approx(0.0, abs=1e-12)  # a real cosine, to 0
    step = TrainRecipe(epochs=4, batch_size=8, lr=0.2, schedule="step", lr_decay_at=0.5, lr_decay_factor=0.1)
    assert [lr_at(step, k, 40, 10) for k in (19, 20)] == pytest.approx([0.2, 0.02])


def test_kd_trainer_lock_step_equals_one_network_at_a_time(smoke_splits):
    images, labels = one_per_class(smoke_splits)
    logits = torch.randn(len(labels), 10, generator=make_generator(1))
    # SGD: elementwise and smooth in the gradient, so lock-step and one-by-one agree to float precision
    # (AdamW's normalisation would magnify the last-bit differences of vmapped convolutions).
    recipe = TrainRecipe(epochs=3, batch_size=4, lr=0.05, optimizer="sgd", schedule="cosine", augment="crop_flip",
                         crop_padding=4, flip=True, mixup=0.8, temperature=4.0)
    states = {}
    for vmap in (True, False):
        nets = NetworkBatch("convnet", smoke_splits.info, [0, 1], CPU, vmap=vmap, width=8)
        train(nets, images, logits, recipe, make_generator(7))
        states[vmap] = [unstack_state(nets.params, nets.buffers, i) for i in range(2)] if vmap else [
            m.state_dict() for m in nets.models]
    for a, b in zip(states[True], states[False]):
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_kd_against_a_strong_teacher_beats_hard_labels(digits, tmp_path):
    """One image per class: an online teacher trained on all of digits carries far more than the 10 hard labels."""
    images, labels = one_per_class(digits)
    common = dict(name="kd-test", kind="kd", optimizer="adamw", lr=3e-3, weight_decay=0.01, schedule="cosine",
                  epochs=100, batch_size=64, augment="crop_flip", crop_padding=2, flip=False, num_seeds=2,
                  models=["mlp"], model_kwargs={"mlp": {"width": 64}},
                  teacher=dict(models=["mlp"], model_kwargs={"mlp": {"width": 128}}, epochs=20, batch_size=64,
                               lr=0.05, augment="crop_flip", crop_padding=2, flip=False))
    cache = Cache(tmp_path)
    hard = evaluate_synthetic(images, labels, digits, EvalProtocol.from_dict(common | {"label_source": "hard"}),
                              cache=cache)[0]
    soft = evaluate_synthetic(images, labels, digits, EvalProtocol.from_dict(
        common | {"label_source": "teacher", "temperature": 4.0, "t2_scaling": True}), cache=cache)[0]
    assert hard.label_type == "hard" and soft.label_type == "soft"
    assert soft.mean > hard.mean + 0.05, (soft.accuracies, hard.accuracies)


# ------------------------------------------------------------------------- choices on validation, not test


def test_holdout_split_is_disjoint_and_per_class(digits_small):
    rest, val = holdout_split(digits_small.train, 0.1, seed=0)
    assert val.counts.tolist() == [3] * 10 and rest.counts.tolist() == [27] * 10
    seen = {tuple(r.flatten().tolist()) for r in rest.images}
    assert not any(tuple(v.flatten().tolist()) in seen for v in val.images)
    again = holdout_split(digits_small.train, 0.1, seed=0)[1]
    assert torch.equal(again.images, val.images)


def test_lr_grid_is_chosen_on_validation_and_the_test_split_is_read_once(digits_small, monkeypatch):
    images, labels = one_per_class(digits_small)
    grid = [0.001, 0.05, 0.01]
    proto = EvalProtocol.from_dict(dict(epochs=2, epochs_no_aug=2, augment="none", num_seeds=2, models=["mlp", "lenet"],
                                        model_kwargs={"mlp": {"width": 16}}, lr_grid=grid, learned_lr=True))
    calls = []
    fake_val = iter([0.2, 0.9, 0.5, 0.6, 0.1, 0.3])  # per grid lr, for mlp then lenet: picks 0.05, then 0.001
    real = evaluate_module.test_accuracy

    def spy(nets, split, batch_size=1024):
        is_test = split is digits_small.test
        calls.append(("test" if is_test else "val", nets.name))
        if is_test:
            return real(nets, split, batch_size)
        assert not torch.equal(split.images, digits_small.test.images)
        return torch.full((len(nets),), next(fake_val))

    monkeypatch.setattr(evaluate_module, "test_accuracy", spy)
    results = evaluate_synthetic(images, labels, digits_small, proto)
    assert [r.lr for r in results] == [0.05, 0.001] and {r.lr_source for r in results} == {"grid"}
    assert calls == [("val", "mlp")] * 3 + [("test", "mlp")] + [("val", "lenet")] * 3 + [("test", "lenet")]
    # a learned lr, when the protocol takes it, needs no selection at all
    calls.clear()
    learned = evaluate_synthetic(images, labels, digits_small, proto.__class__.from_dict(
        proto.to_dict() | {"models": ["mlp"]}), learned_lr=torch.tensor(0.02))
    assert learned[0].lr == pytest.approx(0.02) and calls == [("test", "mlp")]
