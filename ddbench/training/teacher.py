"""Teachers for soft-label protocols: trained by ddbench on the full real train set, cached, never downloaded."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ddbench.cache import Cache
from ddbench.data import ClassTensors, Splits
from ddbench.training.networks import NetworkBatch, init_model, layout_digest
from ddbench.training.recipe import TeacherConfig
from ddbench.training.trainer import train
from ddbench.utils import DDBenchError, make_generator, stable_hash

log = logging.getLogger(__name__)

STATE_PREFIX = "state."
# BatchNorm of an online teacher while it relabels: eval = running statistics (per-sample logits); train = each
# network's batch normalised with its own statistics (the SRe2L/CDA CIFAR relabel script), running stats untouched.
TEACHER_BN = ("eval", "train")


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm layer of `model` normalises with the statistics of the batch it sees, and its stored
    running statistics (and num_batches_tracked) are neither used nor updated; other layers (dropout) keep their
    mode. Everything is restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in layers]
    try:
        for m in layers:
            m.training, m.track_running_stats = True, False  # F.batch_norm gets no running stats to update
        yield
    finally:
        for m, (training, track) in zip(layers, saved):
            m.training, m.track_running_stats = training, track


class Teacher:
    """An ensemble of trained models in eval mode; calling it returns the mean of the members' logits.

    __call__(x [B,C,H,W]) → [B,K] (no gradient); logits(images) does the same over a whole set in chunks.
    test_accuracy / train_accuracy: the ensemble's accuracy on the test / train split (fractions), measured once
    when it was trained (an ensemble's from its mean logits); None where unknown.
    bn: the BatchNorm mode of `relabel` (TEACHER_BN; `with_bn` gives a copy in another mode). __call__ and
    logits always use the running statistics.
    """

    def __init__(self, members: list[nn.Module], names: list[str], chunk: int = 4096,
                 test_accuracy: float | None = None, train_accuracy: float | None = None,
                 augment: dict[str, Any] | None = None, bn: str = "eval"):
        self.members = [m.eval() for m in members]
        for m in self.members:
            m.requires_grad_(False)
        self.names = names
        self.chunk = chunk
        self.test_accuracy = test_accuracy
        self.train_accuracy = train_accuracy
        self.augment = augment or {}  # how it was trained: {augment, crop_padding, flip, epochs}
        if bn not in TEACHER_BN:
            raise DDBenchError(f"teacher BatchNorm mode must be one of {', '.join(map(repr, TEACHER_BN))}, got {bn!r}.")
        self.bn = bn

    def with_bn(self, bn: str) -> "Teacher":
        """This teacher (the same member networks) with `relabel` in BatchNorm mode `bn`."""
        if bn == self.bn:
            return self
        if bn not in TEACHER_BN:
            raise DDBenchError(f"teacher BatchNorm mode must be one of {', '.join(map(repr, TEACHER_BN))}, got {bn!r}.")
        other = copy.copy(self)
        other.bn = bn
        return other

    def summary(self) -> dict[str, Any]:
        """What a record says of the teacher: {models, test_accuracy, train_accuracy, augment, crop_padding, flip,
        epochs}, and bn='train' when it relabels with batch statistics."""
        out = {"models": list(self.names), "test_accuracy": self.test_accuracy,
               "train_accuracy": self.train_accuracy, **self.augment}
        return (out | {"bn": self.bn}) if self.bn != "eval" else out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.chunk:
            return torch.cat([self(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)])
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Static soft labels: the teacher's logits on un-augmented images [...,C,H,W] → [...,K]."""
        flat = images.reshape(-1, *images.shape[-3:])
        return self(flat).view(*images.shape[:-3], -1)

    @torch.no_grad()
    def relabel(self, x: torch.Tensor) -> torch.Tensor:
        """Online targets for S networks' augmented batches x [S,B,C,H,W] → [S,B,K] (mean of the members' logits).

        bn 'eval': one call on the [S*B] images. bn 'train': each network's batch of B images in its own forward,
        BatchNorm normalising with that batch's statistics (`batch_statistics`); the members are left unchanged."""
        if self.bn == "eval":
            return self(x.flatten(0, 1)).view(*x.shape[:2], -1)
        out = []
        for batch in x:  # [B,C,H,W]: the statistics of one network's batch, as the reference's one student sees
            total = None
            for member in self.members:
                with batch_statistics(member):
                    try:
                        logits = member(batch)
                    except ValueError as err:  # "Expected more than 1 value per channel when training"
                        raise DDBenchError(
                            f"eval.teacher_bn=train cannot normalise a batch of {len(batch)} image(s) with its own "
                            f"statistics ({err}); use a batch size that leaves no 1-image batch, or "
                            "eval.teacher_bn=eval.") from err
                total = logits if total is None else total + logits
            out.append(total / len(self.members))
        return torch.stack(out)


def teacher_key(cfg: TeacherConfig, splits: Splits, index: int) -> dict[str, Any]:
    """What member `index` of a teacher depends on (its recipe resolved for the data: crop padding, flip)."""
    from ddbench.training.embedding import data_fingerprint

    name = cfg.models[index]
    kwargs = cfg.model_kwargs.get(name, {})
    return {
        "data": data_fingerprint(splits), "model": name, "model_kwargs": kwargs,
        "layout": layout_digest({"name": name, **kwargs}, splits.info),
        "recipe": cfg.for_data(splits.info).recipe().to_dict(), "seed": cfg.seed + index, "init": "teacher-init",
    }


def teacher_init_seed(name: str, seed: int) -> int:
    """The initialisation seed of a teacher member: derived from ("teacher", name, seed), so a teacher never
    starts from the weights of the evaluation network with the same seed."""
    return int(stable_hash(["teacher-init", name, int(seed)], 8), 16)


def train_teacher_member(cfg: TeacherConfig, splits: Splits, index: int, device: torch.device,
                         progress: bool = False) -> nn.Module:
    """Member `index` of the ensemble trained on splits.train with hard labels and the teacher recipe."""
    cfg = cfg.for_data(splits.info)
    name = cfg.models[index]
    seed = cfg.seed + index
    nets = NetworkBatch(name, splits.info, [teacher_init_seed(name, seed)], device, vmap=False,
                        **cfg.model_kwargs.get(name, {}))
    generator = make_generator(int(stable_hash(["teacher", name, seed], 8), 16), device)
    train(nets, splits.train.images, splits.train.labels, cfg.recipe(), generator, progress=progress)
    if not bool(nets.all_finite()):
        raise DDBenchError(f"training the teacher {name} diverged (non-finite weights) with lr={cfg.lr}; "
                           "lower eval.teacher.lr.")
    return nets.models[0]


@torch.no_grad()
def split_accuracy(model: Callable[[torch.Tensor], torch.Tensor], data: ClassTensors, batch_size: int = 1024) -> float:
    """Accuracy (fraction) of `model` (a module in eval mode, or a Teacher) on a whole split."""
    x, y = data.images, data.labels
    correct = sum(int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def load_teacher(cfg: TeacherConfig, splits: Splits, device: torch.device, cache: Cache | None = None,
                 progress: bool = False) -> Teacher:
    """The teacher ensemble of `cfg`: each member from the cache (kind "teachers"), trained on a miss.

    Each member's train and test accuracy are measured once, when it is trained, and cached with its weights; an
    ensemble's own accuracies come from its mean logits, measured once and cached too (kind "teachers", keyed on
    its members' keys), so loading a cached ensemble forwards no image."""
    cache = cache or Cache()
    cfg = cfg.for_data(splits.info)
    members, accuracies = [], []
    for index, name in enumerate(cfg.models):
        key = teacher_key(cfg, splits, index)

        def build(index: int = index) -> dict[str, torch.Tensor]:
            model = train_teacher_member(cfg, splits, index, device, progress).eval()
            train_acc, test_acc = split_accuracy(model, splits.train), split_accuracy(model, splits.test)
            log.info("teacher %s (seed %d): %.2f %% accuracy on the real train set, %.2f %% on the test set",
                     cfg.models[index], cfg.seed + index, 100 * train_acc, 100 * test_acc)
            tensors = {STATE_PREFIX + k: v for k, v in model.state_dict().items()}
            tensors["train_accuracy"] = torch.tensor(train_acc, dtype=torch.float64)
            tensors["test_accuracy"] = torch.tensor(test_acc, dtype=torch.float64)
            return tensors

        tensors = cache.get_or_create("teachers", key, build, required=("train_accuracy", "test_accuracy"))
        state = {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
        model = init_model(name, splits.info, teacher_init_seed(name, cfg.seed + index),
                           **cfg.model_kwargs.get(name, {})).to(device)
        model.load_state_dict(state)
        members.append(model)
        accuracies.append((float(tensors["train_accuracy"]), float(tensors["test_accuracy"])))
    teacher = Teacher(members, list(cfg.models), train_accuracy=accuracies[0][0], test_accuracy=accuracies[0][1],
                      augment={"augment": cfg.augment, "crop_padding": cfg.crop_padding, "flip": cfg.flip,
                               "epochs": cfg.epochs})
    if len(members) > 1:  # measured once per ensemble too (two forwards of every split), cached beside its members
        def measure() -> dict[str, torch.Tensor]:
            return {"train_accuracy": torch.tensor(split_accuracy(teacher, splits.train), dtype=torch.float64),
                    "test_accuracy": torch.tensor(split_accuracy(teacher, splits.test), dtype=torch.float64)}

        key = {"ensemble": [teacher_key(cfg, splits, index) for index in range(len(members))]}
        found = cache.get_or_create("teachers", key, measure, required=("train_accuracy", "test_accuracy"))
        teacher.train_accuracy, teacher.test_accuracy = float(found["train_accuracy"]), float(found["test_accuracy"])
    return teacher
