"""CDA and INFER: methods on digits, INFER's budget rule and its factorized artifact."""

from __future__ import annotations

import json

import pytest
import torch

from ddbench.artifact import Artifact, load_artifact, save_artifact
from ddbench.artifact.decode import materialise_ufc
from ddbench.cache import Cache
from ddbench.methods import create_method
from ddbench.methods.infer import real_groups
from ddbench.methods.teachers import teacher_config
from ddbench.training import load_teacher
from ddbench.utils import DDBenchError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
TEACHER = {"epochs": 8, "lr": 0.05, "batch_size": 32, "models": ["convnet_bn"],
           "model_kwargs": {"convnet_bn": {"width": 16}}}
ENSEMBLE = {"epochs": 1, "batch_size": 64, "models": ["convnet_bn", "vgg11_bn"],
            "model_kwargs": {"convnet_bn": {"width": 16}, "vgg11_bn": {"cfg": [8, "M", 16, "M"]}}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("cache"))


def run(name: str, splits, ipc: int, cache: Cache, seed: int = 0, **options):
    return create_method(name, splits=splits, ipc=ipc, seed=seed, device=CPU, options=options, cache=cache).distill()


# -------------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize("classes, teachers, ipc, groups", [
    (10, 4, 10, 7), (10, 4, 50, 35), (100, 4, 10, 9), (100, 4, 50, 48), (100, 4, 100, 96), (1000, 3, 10, 9),
])
def test_budget_table(classes, teachers, ipc, groups):
    assert real_groups(ipc, classes, teachers) == groups
    stored = groups * classes + groups * teachers
    assert stored <= ipc * classes
    if (classes, ipc) == (10, 10):
        assert (groups * classes, groups * teachers, stored, groups * (teachers + 1)) == (70, 28, 98, 35)


@pytest.mark.parametrize("classes, teachers, smallest", [(10, 4, 2), (100, 4, 2), (10, 10, 2), (10, 25, 4)])
def test_budget_error_names_the_smallest_valid_ipc(classes, teachers, smallest):
    with pytest.raises(DDBenchError, match=f"smallest valid ipc is {smallest}"):
        real_groups(smallest - 1, classes, teachers)
    assert real_groups(smallest, classes, teachers) >= 1


def test_infer_checks_the_budget_before_training_teachers(digits_small, tmp_path):
    empty = Cache(tmp_path / "cache")
    with pytest.raises(DDBenchError, match="smallest valid ipc is 2"):
        run("infer", digits_small, 1, empty, teacher=ENSEMBLE, small_ipc="error")
    assert not any((tmp_path / "cache").rglob("*.safetensors"))


def test_infer_below_the_budget_stores_real_images_with_ensemble_labels(digits_small, cache):
    result = run("infer", digits_small, 1, cache, iterations=3, teacher=ENSEMBLE)  # small_ipc=real (default)
    assert result.images.shape == (10, 1, 16, 16) and not result.extras and "decode" not in result.meta
    assert "no UFC" in result.meta["variant"] and result.meta["stored_images"] == {"real": 10, "ufc": 0}
    train = digits_small.train
    for row, image in enumerate(result.images):  # ipc real training images per class, class-major
        hits = (train.images == image).flatten(1).all(1).nonzero().flatten()
        assert len(hits) and int(train.labels[hits[0]]) == row
    teacher = load_teacher(teacher_config(ENSEMBLE, digits_small.info, ensemble=True), digits_small, CPU, cache)
    torch.testing.assert_close(result.labels, teacher.logits(result.images))
    hard = run("infer", digits_small, 1, cache, teacher=ENSEMBLE, labels="hard")
    assert torch.equal(hard.labels, torch.arange(10)) and torch.equal(hard.images, result.images)


# ---------------------------------------------------------------------------------------------- CDA


def test_cda_recovers_a_class_major_set_in_the_pixel_range(digits_small, cache):
    result = run("cda", digits_small, 2, cache, iterations=3, teacher=TEACHER)
    info = digits_small.info
    assert result.images.shape == (20, 1, 16, 16)
    assert torch.equal(result.labels, torch.arange(10).repeat_interleave(2))
    low, high = -info.mean[0] / info.std[0], (1 - info.mean[0]) / info.std[0]
    assert result.images.min() >= low - 1e-6 and result.images.max() <= high + 1e-6
    again = run("cda", digits_small, 2, cache, iterations=3, teacher=TEACHER)
    assert torch.equal(result.images, again.images)  # same seed, same set
    other = run("cda", digits_small, 2, cache, seed=1, iterations=3, teacher=TEACHER)
    assert not torch.equal(result.images, other.images)


def test_cda_real_init_starts_from_real_images_of_each_class(digits_small, cache):
    result = run("cda", digits_small, 3, cache, iterations=0, init="real", teacher=TEACHER)
    train = digits_small.train
    assert torch.equal(result.labels, torch.arange(10).repeat_interleave(3))
    for image, label in zip(result.images, result.labels):  # every image is a train image of its own class
        assert (train.class_images(int(label)) == image).flatten(1).all(1).any()
    assert len({tuple(img.flatten().tolist()) for img in result.images}) == 30  # distinct rows
    moved = run("cda", digits_small, 3, cache, iterations=2, init="real", teacher=TEACHER)
    assert not torch.equal(moved.images, result.images) and moved.meta["init"] == "real"


def test_cda_recovery_lowers_the_teacher_loss(digits_small, cache):
    before = run("cda", digits_small, 1, cache, iterations=0, teacher=TEACHER)
    after = run("cda", digits_small, 1, cache, iterations=30, lr=0.1, teacher=TEACHER)
    teacher = load_teacher(teacher_config(TEACHER, digits_small.info), digits_small, CPU, cache)
    labels = torch.arange(10)
    ce = lambda x: torch.nn.functional.cross_entropy(teacher(x), labels).item()  # noqa: E731
    assert ce(after.images) < 0.5 * ce(before.images)


def test_cda_options_are_checked(digits_small, cache):
    with pytest.raises(DDBenchError, match="method.min_scale must be in"):
        run("cda", digits_small, 1, cache, min_scale=1.5)
    with pytest.raises(DDBenchError, match="class_batch"):
        run("cda", digits_small, 1, cache, class_batch=3, teacher=TEACHER)
    with pytest.raises(DDBenchError, match="unknown method.teacher option"):
        run("cda", digits_small, 1, cache, teacher={"modles": ["convnet_bn"]})
    with pytest.raises(DDBenchError, match="no BatchNorm"):
        run("cda", digits_small, 1, cache, iterations=1, teacher=dict(TEACHER, models=["convnet"], model_kwargs={}))


# -------------------------------------------------------------------------------------------- INFER


@pytest.fixture(scope="module")
def infer_result(digits_small, cache):
    return run("infer", digits_small, 3, cache, iterations=3, teacher=ENSEMBLE)


def test_infer_stores_real_groups_and_one_ufc_per_group_and_teacher(digits_small, infer_result):
    g = real_groups(3, 10, 2)  # floor(3 / 1.2) = 2
    assert g == 2
    real, ufc = infer_result.images, infer_result.extras["ufc"]
    assert real.shape == (10 * g, 1, 16, 16) and ufc.shape == (g, 2, 1, 16, 16)
    assert ufc.abs().sum() > 0
    train = digits_small.train
    for row, image in enumerate(real):  # every stored real image is a training image of its class
        hits = (train.images == image).flatten(1).all(1).nonzero().flatten()
        assert len(hits) and int(train.labels[hits[0]]) == row // g
    rule = infer_result.meta["decode"]
    assert rule["groups"] == g and rule["teachers"] == ["convnet_bn", "vgg11_bn"]
    assert infer_result.meta["stored_images"] == {"real": 20, "ufc": 4}


def test_infer_labels_are_the_mean_teacher_logits_of_the_materialised_set(digits_small, cache, infer_result):
    rule = infer_result.meta["decode"]
    low, high = torch.tensor(rule["clamp"]["low"]), torch.tensor(rule["clamp"]["high"])
    images = materialise_ufc(infer_result.images, infer_result.extras["ufc"], low, high)
    assert images.shape == (10 * 2 * 3, 1, 16, 16)
    teacher = load_teacher(teacher_config(ENSEMBLE, digits_small.info, ensemble=True), digits_small, CPU, cache)
    a, b = teacher.members
    torch.testing.assert_close(infer_result.labels, (a(images) + b(images)) / 2, rtol=1e-4, atol=1e-4)


def infer_artifact(result) -> Artifact:
    meta = {"dataset": "digits", "num_classes": 10, "image_shape": [1, 16, 16], "ipc": 3, "method": "infer",
            **result.meta}
    return Artifact(result.images, result.labels, meta, extras=dict(result.extras))


def test_factorized_artifact_round_trips_with_its_decode_rule(tmp_path, infer_result):
    artifact = infer_artifact(infer_result)
    path = save_artifact(artifact, tmp_path / "art")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["decode"]["kind"] == "real_plus_ufc"
    assert meta["stored_bytes"] == (path / "tensors.safetensors").stat().st_size
    # stored: 20 real + 4 UFC images (+ the 60 label rows), not the 60 materialised images
    assert meta["stored_bytes"] < 4 * (24 * 256 + 60 * 10) + 4096
    loaded = load_artifact(path)
    images, labels = loaded.training_set()
    assert images.shape == (60, 1, 16, 16) and torch.equal(labels, infer_result.labels)
    real, ufc = infer_result.images, infer_result.extras["ufc"]
    low, high = meta["decode"]["clamp"]["low"][0], meta["decode"]["clamp"]["high"][0]
    for c, p, g in [(0, 0, 0), (3, 0, 1), (4, 1, 0), (9, 2, 1)]:  # row c·G(M+1) + p·G + g
        expected = real[c * 2 + g] if p == 0 else (real[c * 2 + g] + ufc[g, p - 1]).clamp(low, high)
        torch.testing.assert_close(images[c * 6 + p * 2 + g], expected)


def test_factorized_artifact_is_checked_against_its_rule(tmp_path, infer_result):
    artifact = infer_artifact(infer_result)
    artifact.extras = {"ufc": infer_result.extras["ufc"][:1]}
    with pytest.raises(DDBenchError, match="UFCs have shape"):
        save_artifact(artifact, tmp_path / "bad")
    artifact = infer_artifact(infer_result)
    artifact.meta = dict(artifact.meta, ipc=2)  # 20 real + 4 UFC images do not fit into ipc 2 x 10 classes
    with pytest.raises(DDBenchError, match="more than the budget"):
        save_artifact(artifact, tmp_path / "bad")
    artifact = infer_artifact(infer_result)
    artifact.meta = dict(artifact.meta, decode=dict(artifact.meta["decode"], kind="zip"))
    with pytest.raises(DDBenchError, match="decode kind 'zip' is unknown"):
        save_artifact(artifact, tmp_path / "bad")


def test_exports_show_the_decoded_training_set(tmp_path, infer_result):
    from ddbench.artifact.exporters import export_imagefolder

    folder = export_imagefolder(infer_artifact(infer_result), tmp_path / "folder")
    counts = {int(d.name): len(list(d.iterdir())) for d in folder.iterdir()}
    assert sum(counts.values()) == 60  # 2 real + 2 x 2 real + UFC images per class, class-major
    assert [counts.get(c, 0) for c in range(10)] == [6] * 10


# ------------------------------------------------------------------------------------- shared teachers


@pytest.mark.parametrize("method, protocol", [("cda", "cda"), ("infer", "infer"), ("infer", "infer_dyn")])
def test_method_and_protocol_defaults_train_the_same_cifar_teachers(method, protocol):
    """At 32 px the method's default teacher block and the protocol's teacher are one recipe (one cache entry)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from ddbench.data import dataset_info
    from ddbench.evaluation import EvalProtocol

    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={method}", f"eval={protocol}", "dataset=cifar10",
                                                       "paths.output=/tmp/ddbench-compose-test"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    ours = teacher_config(plain["method"]["teacher"], dataset_info("cifar10"), ensemble=method == "infer")
    theirs = EvalProtocol.from_dict(plain["eval"]).teacher
    assert ours == theirs
    assert ours.models[0] == "resnet18_cifar" and len(ours.models) == (1 if method == "cda" else 4)
    if protocol == "infer_dyn":  # epochs ÷ (M + 1) of the static protocol's 400
        assert plain["eval"]["epochs"] == 400 // (len(ours.models) + 1) and plain["eval"]["label_source"] == "teacher"


def test_auto_teachers_follow_the_image_size(digits_small):
    from ddbench.data import dataset_info

    assert teacher_config({}, digits_small.info).models == ["convnet_bn"]
    assert teacher_config({"models": "auto"}, dataset_info("cifar100")).models == ["resnet18_cifar"]
    assert len(teacher_config(None, digits_small.info, ensemble=True).models) == 3
