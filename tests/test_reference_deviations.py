"""The deviations from the reference code that issue 26 found, each pinned: the teacher's BatchNorm mode while
relabelling (CDA/SRe2L CIFAR), INFER's CIFAR EfficientNet-B0, eval=infer_dyn's ensemble and epochs taken from the
artifact, and the lr warm-up of the Tiny-ImageNet KD recipe."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from ddbench import pipeline
from ddbench.cache import Cache
from ddbench.data import dataset_info
from ddbench.evaluation import EvalProtocol, evaluate_synthetic
from ddbench.evaluation import evaluate as evaluate_module
from ddbench.evaluation.derive import declared_eval_config, eval_config_for_artifact, protocol_for_artifact
from ddbench.methods import create_method
from ddbench.methods.experts import ExpertSpec
from ddbench.methods.teachers import auto_models
from ddbench.models import create_model, list_models, supports_vmap_training
from ddbench.training import NetworkBatch, TeacherConfig, TrainRecipe, train
from ddbench.training.teacher import Teacher
from ddbench.training.trainer import lr_at
from ddbench.utils import DDBenchError, make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def composed(*overrides: str, smoke: bool = False) -> dict:
    """The resolved config of `overrides` (dataset digits unless given), as ddbench-run makes it."""
    args = ["paths.output=/tmp/ddbench-unused", *overrides]
    if not any(a.startswith(("dataset=", "experiment=")) for a in args):
        args.append("dataset=digits")
    if smoke:
        args.append("smoke=true")
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=args)
    return pipeline.resolved_config(cfg, args) if smoke else OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------------ 1. the teacher's BatchNorm mode


def bn_teacher(splits) -> Teacher:
    """A ConvNet-BN teacher whose running statistics are far from any batch's own (so the two modes differ)."""
    torch.manual_seed(0)
    model = create_model("convnet_bn", 1, 10, splits.info.image_size, width=8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 3)
            m.num_batches_tracked.fill_(7)
    return Teacher([model], ["convnet_bn"])


def test_train_mode_batchnorm_changes_the_labels_and_leaves_the_teacher_as_it_was(digits_small):
    teacher = bn_teacher(digits_small)
    member = teacher.members[0]
    before = copy.deepcopy(member.state_dict())
    x = digits_small.train.images[:12].view(2, 6, *digits_small.info.shape)  # [S=2, B=6, C, H, W]
    eval_labels = teacher.relabel(x)
    assert torch.equal(eval_labels, teacher(x.flatten(0, 1)).view(2, 6, -1))  # eval: the former single call
    train_labels = teacher.with_bn("train").relabel(x)
    assert train_labels.shape == eval_labels.shape == (2, 6, 10)
    assert not torch.allclose(train_labels, eval_labels, atol=1e-3)  # the BN mode changes the labels
    for s in range(2):  # each network's batch is normalised with its own statistics
        reference = copy.deepcopy(member).train()
        with torch.no_grad():
            torch.testing.assert_close(train_labels[s], reference(x[s]))
    after = member.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and counters untouched
    assert not any(m.training for m in member.modules())  # still in eval mode
    assert all(m.track_running_stats for m in member.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert teacher.bn == "eval" and teacher.with_bn("eval") is teacher  # with_bn returns a copy
    assert teacher.with_bn("train").summary()["bn"] == "train" and "bn" not in teacher.summary()


def test_teacher_bn_is_a_protocol_option_with_one_clear_error():
    assert EvalProtocol().teacher_bn == "eval"
    with pytest.raises(DDBenchError, match=r"eval.teacher_bn must be one of 'eval', 'train', got 'batch'"):
        EvalProtocol.from_dict({"kind": "kd", "label_source": "teacher", "teacher_bn": "batch"})
    assert EvalProtocol.from_dict(composed("eval=cda")["eval"]).teacher_bn == "train"  # the reference's mode
    for name in ("dc", "kd", "infer", "infer_dyn"):
        assert EvalProtocol.from_dict(composed(f"eval={name}")["eval"]).teacher_bn == "eval"
    tiny = EvalProtocol.from_dict(composed("experiment=cda_tinyimagenet_ipc50")["eval"])
    assert tiny.teacher_bn == "eval"  # the Tiny KD script calls teacher.eval()


def test_the_bn_mode_is_part_of_the_key_of_cached_runs(digits_small, tmp_path):
    proto = EvalProtocol.from_dict({"kind": "kd", "label_source": "teacher", "models": ["mlp"], "num_seeds": 1})
    ev = evaluate_module.Evaluator(digits_small, proto, Cache(tmp_path))
    assert "bn" not in ev.teacher_key()  # eval mode: the key of runs cached before the option existed
    assert ev.teacher_key("train") == ev.teacher_key() | {"bn": "train"}
    assert "teacher_bn" not in proto.recipe_key() and "artifact_teacher" not in proto.recipe_key()


def test_a_kd_evaluation_with_train_mode_batchnorm_runs_under_smoke(tmp_path, monkeypatch):
    cfg = composed("eval=cda", "eval.teacher.models=[convnet_bn]", "+eval.teacher.model_kwargs.convnet_bn={width:16}",
                   smoke=True)
    splits = pipeline.load_splits(cfg, CPU)
    rows = splits.train.sample_per_class(1, make_generator(0)).flatten()
    images, labels = splits.train.images[rows], splits.train.labels[rows]
    trained = []
    original = evaluate_module.Evaluator._train_and_test

    def counting(self, protocol, *args, **kwargs):
        trained.append(protocol.teacher_bn)
        return original(self, protocol, *args, **kwargs)

    monkeypatch.setattr(evaluate_module.Evaluator, "_train_and_test", counting)
    cache = Cache(tmp_path)
    proto = EvalProtocol.from_dict(cfg["eval"])
    assert proto.teacher_bn == "train" and proto.label_source == "teacher" and proto.checkpoint_minutes > 0
    (result,) = evaluate_synthetic(images, labels, splits, proto, cache=cache, ipc=1)
    assert result.teacher["bn"] == "train" and len(result.accuracies) == 2
    assert all(0 <= a <= 1 for a in result.accuracies)
    evaluate_synthetic(images, labels, splits, EvalProtocol.from_dict(cfg["eval"] | {"teacher_bn": "eval"}),
                       cache=cache, ipc=1)
    evaluate_synthetic(images, labels, splits, proto, cache=cache, ipc=1)  # the train-mode run again: cached
    assert trained == ["train", "eval"]


# ---------------------------------------------------------------------- 2. INFER's CIFAR EfficientNet-B0


def test_cifar_efficientnet_ends_on_2x2_at_32px_and_is_in_the_auto_ensemble():
    assert "efficientnet_b0_cifar" in list_models()
    torch.manual_seed(0)
    model = create_model("efficientnet_b0_cifar", 3, 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, emb = model.feature_maps(x, embedding=True)
        logits = model(x)
        torch.testing.assert_close(emb, model.embed(x))
        torch.testing.assert_close(model.classifier(emb), logits)
    assert list(maps[0].shape[1:]) == [32, 32, 32]  # the stride-1 stem keeps 32 px
    assert list(maps[-1].shape[1:]) == [320, 2, 2] and len(maps) == 8
    assert logits.shape == (2, 10) and supports_vmap_training(model)
    timm_model = create_model("timm:efficientnet_b0", 3, 10, 32).eval()
    with torch.no_grad():  # what it replaces: timm's ImageNet network ends on 1x1 at 32 px
        assert timm_model.model.forward_features(x).shape[-2:] == (1, 1)
    ensemble = auto_models(dataset_info("cifar10"), ensemble=True)
    assert "efficientnet_b0_cifar" in ensemble and not any(m.startswith("timm:") for m in ensemble)
    assert EvalProtocol.from_dict(composed("eval=infer")["eval"]).teacher.models == ensemble
    with pytest.raises(DDBenchError, match="unknown efficientnet_b0_cifar option 'depth'; valid options: drop_connect"):
        create_model("efficientnet_b0_cifar", 3, 10, 32, depth=3)


@pytest.mark.parametrize("vmap", [False, True])
def test_cifar_efficientnet_trains_a_step(vmap):
    nets = NetworkBatch("efficientnet_b0_cifar", dataset_info("cifar10"), [0, 1], CPU, vmap=vmap, width=0.25,
                        dropout=0.2, drop_connect=0.2)  # the reference's dropout and drop-connect rates
    before = [p.detach().clone() for p in nets.parameters()]
    images = torch.randn(8, 3, 32, 32, generator=make_generator(0))
    labels = torch.arange(8) % 10
    recipe = TrainRecipe(epochs=1, batch_size=8, lr=0.05, augment="none")
    train(nets, images, labels, recipe, make_generator(1))
    after = nets.parameters()
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


# ------------------------------------------------------------- 3. infer_dyn: the artifact's teachers and epochs

THREE = TeacherConfig(models=["convnet_bn", "mobilenetv2_cifar", "vgg11_bn"], epochs=15, lr=0.05, batch_size=128,
                      model_kwargs={"convnet_bn": {"width": 64}, "mobilenetv2_cifar": {"width": 0.5}})


def infer_meta(teacher: TeacherConfig, ufc: bool = True) -> dict:
    meta = {"method": "infer", "teacher": teacher.to_dict()}
    if ufc:
        meta["decode"] = {"kind": "real_plus_ufc", "teachers": list(teacher.models), "groups": 1}
    return meta


def test_infer_dyn_takes_the_artifacts_three_teachers_and_100_epochs():
    eval_cfg = composed("eval=infer_dyn")["eval"]
    assert eval_cfg["epochs"] == 80 and len(eval_cfg["teacher"]["models"]) == 4  # the 32-px ensemble
    proto = EvalProtocol.from_dict(eval_config_for_artifact(eval_cfg, infer_meta(THREE)))
    assert proto.teacher == THREE  # the teachers that built the UFCs, with their recipe (the same cached networks)
    assert proto.epochs == proto.epochs_no_aug == 100 == 400 // (3 + 1)
    four = THREE.to_dict() | {"models": ["a", "b", "c", "d"]}
    assert eval_config_for_artifact(eval_cfg, {"teacher": four, "decode": {"kind": "real_plus_ufc"}})["epochs"] == 80
    same = protocol_for_artifact(EvalProtocol.from_dict(eval_cfg), infer_meta(THREE))
    assert same.teacher == THREE and same.train_epochs == 100
    assert eval_cfg["epochs"] == 80  # the run's own block is not changed in place


def test_explicit_settings_win_over_the_artifact():
    meta = infer_meta(THREE)
    kept = eval_config_for_artifact(composed("eval=infer_dyn", "eval.epochs=30")["eval"], meta)
    assert kept["epochs"] == 30 and kept["teacher"]["models"] == THREE.models  # epochs set: only the teacher follows
    own = eval_config_for_artifact(composed("eval=infer_dyn", "eval.teacher.models=[convnet_bn]")["eval"], meta)
    assert own["teacher"]["models"] == ["convnet_bn"] and own["epochs"] == 80  # teacher set: nothing follows
    smoke = composed("eval=infer_dyn", smoke=True)["eval"]
    assert eval_config_for_artifact(smoke, meta) is smoke  # smoke's reductions are settings too
    off = composed("eval=infer_dyn", "eval.artifact_teacher=false")["eval"]
    assert eval_config_for_artifact(off, meta) is off
    static = composed("eval=infer")["eval"]
    assert eval_config_for_artifact(static, meta) is static  # eval=infer labels once, with its own teacher
    plain = composed("eval=infer_dyn")["eval"]
    assert eval_config_for_artifact(plain, {"method": "dm"}) is plain  # an artifact without teachers
    no_ufc = EvalProtocol.from_dict(eval_config_for_artifact(plain, infer_meta(THREE, ufc=False)))
    assert no_ufc.teacher == THREE and no_ufc.epochs == 80  # no materialised UFC images: the epochs stay
    assert declared_eval_config("no_such_protocol") is None


def test_an_infer_artifact_records_its_teachers_and_pipeline_evaluate_uses_them(digits_small, tmp_path, monkeypatch):
    ensemble = {"epochs": 1, "batch_size": 64, "models": ["convnet_bn", "vgg11_bn"],
                "model_kwargs": {"convnet_bn": {"width": 16}, "vgg11_bn": {"cfg": [8, "M", 16, "M"]}}}
    cfg = composed("method=infer", "eval=infer_dyn", "ipc=2", f"paths.cache={tmp_path}")
    method = create_method("infer", splits=digits_small, ipc=2, seed=0, device=CPU, cache=Cache(tmp_path),
                           options={"teacher": ensemble, "iterations": 2})
    result = method.distill()
    recorded = TeacherConfig(**result.meta["teacher"])
    assert recorded.models == ensemble["models"] and recorded.epochs == 1
    assert recorded == method.opts.teacher.resolve(digits_small.info, ensemble=True)
    artifact = pipeline._artifact(cfg, digits_small, result, 1.0)
    seen = []
    monkeypatch.setattr(pipeline, "evaluate_synthetic", lambda images, labels, splits, protocol, *a, **k:
                        seen.append(protocol) or [])
    pipeline.evaluate(cfg, artifact, digits_small)
    (proto,) = seen
    assert proto.teacher == recorded and proto.epochs == 400 // (2 + 1)
    assert cfg["eval"]["epochs"] == 133  # what the records' config says


# --------------------------------------------------------------------------- 4. the lr warm-up of the recipe


def test_warmup_rises_linearly_then_follows_the_cosine():
    recipe = TrainRecipe(epochs=10, batch_size=8, lr=0.2, schedule="cosine", warmup_epochs=2)
    total, per_epoch, warm = 50, 5, 10
    lrs = [lr_at(recipe, k, total, per_epoch) for k in range(total + 1)]
    assert lrs[0] == pytest.approx(0.2 * 0.01)
    rises = [b - a for a, b in zip(lrs[:warm], lrs[1:warm + 1])]
    assert all(r == pytest.approx(0.2 * 0.99 / warm) for r in rises)  # linear, up to the full lr at step W
    assert lrs[warm] == pytest.approx(0.2)
    for k in range(warm, total + 1):  # then the cosine over the remaining steps, to 0
        assert lrs[k] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))), abs=1e-12)
    plain = TrainRecipe(epochs=10, batch_size=8, lr=0.2, schedule="cosine")
    assert all(lr_at(plain, k, total, per_epoch) == 0.2 * 0.5 * (1 + math.cos(math.pi * k / total))
               for k in range(total + 1))  # warmup 0: the former formula, bit for bit
    step = TrainRecipe(epochs=10, batch_size=8, lr=0.2, schedule="step", lr_decay_at=0.5, warmup_epochs=2)
    assert [lr_at(step, k, total, per_epoch) for k in (10, 24, 25)] == pytest.approx([0.2, 0.2, 0.02])


def test_warmup_changes_training_and_keeps_old_keys():
    images = torch.randn(16, 1, 16, 16, generator=make_generator(0))
    labels = torch.arange(16) % 4
    weights = []
    for warmup in (0, 1):
        nets = NetworkBatch("mlp", dataset_info("digits"), [0], CPU, vmap=False, width=8)
        train(nets, images, labels, TrainRecipe(epochs=3, batch_size=8, lr=0.1, augment="none", warmup_epochs=warmup),
              make_generator(1))
        weights.append([p.detach().clone() for p in nets.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(*weights))
    assert "warmup_epochs" not in TrainRecipe().to_dict()  # cached teachers, experts and runs keep their keys
    assert TrainRecipe(warmup_epochs=5).to_dict()["warmup_epochs"] == 5
    assert "warmup_epochs" not in EvalProtocol().recipe_key()
    assert EvalProtocol(warmup_epochs=5).recipe_key()["warmup_epochs"] == 5
    assert "warmup_epochs" not in ExpertSpec().recipe() and ExpertSpec(warmup_epochs=2).recipe()["warmup_epochs"] == 2
    with pytest.raises(DDBenchError, match=r"eval.warmup_epochs must be an int in \[0, eval.epochs = 10\)"):
        EvalProtocol.from_dict({"epochs": 10, "warmup_epochs": 10})
    with pytest.raises(DDBenchError, match="warmup_epochs"):
        EvalProtocol.from_dict({"warmup_epochs": -1})


def test_the_tiny_imagenet_cda_presets_warm_up_for_5_epochs():
    for ipc in (50, 100):
        proto = EvalProtocol.from_dict(composed(f"experiment=cda_tinyimagenet_ipc{ipc}")["eval"])
        assert proto.warmup_epochs == 5 and proto.recipe(proto.lr).warmup_epochs == 5
        assert proto.epochs == 100 and proto.schedule == "cosine" and proto.optimizer == "sgd"
    assert EvalProtocol.from_dict(composed("eval=cda")["eval"]).warmup_epochs == 0
    assert EvalProtocol.from_dict(composed("eval=dc")["eval"]).warmup_epochs == 0
