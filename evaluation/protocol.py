"""Evaluation protocols: the recipe a fresh network is trained with on a synthetic set.

Two trainer kinds share one config schema (conf/eval/*.yaml):

* ``kind: dc``: the classic hard-label evaluator of DC/DSA/DM/MTT: SGD, one step decay with a momentum reset,
  DSA; soft artifact labels are trained with soft cross-entropy at temperature 1 (DATM's evaluator).
* ``kind: kd``: the modern recipe of SRe2L/CDA/INFER/DQ: SGD or AdamW, cosine (to 0), RandomCrop+flip on the
  device, mixup/cutmix that also mix the targets, and soft targets from the artifact's stored logits, from a
  teacher's static logits, or from an online teacher that relabels every augmented batch
  (KL(softmax(t/T) || softmax(s/T)), optionally × T²).

Learning rates, when a protocol chooses one (``lr_grid``), are chosen on a validation split held out of the
training set, never on the test set; test accuracy is measured once, at the last epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ddbench.training.networks import COMPILE_CHOICES
from ddbench.training.recipe import TeacherConfig, TrainRecipe, without_neutral
from ddbench.training.teacher import TEACHER_BN
from ddbench.utils import DDBenchError, check_option_types

KINDS = ("dc", "kd")
# artifact: train on what the artifact stores (hard → CE, soft logits → soft loss);
# hard: hard labels (argmax of stored logits if soft); stored: the artifact's soft logits (required);
# static: stored logits if present, else the teacher's logits on the un-augmented images, computed once (INFER);
# teacher: an online teacher (ensemble) relabels every augmented, mixed batch (SRe2L/CDA "relabel").
LABEL_SOURCES = ("artifact", "hard", "stored", "static", "teacher")
SCORES = ("hlr", "ior", "lrs", "ars")


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise DDBenchError(f"eval.{name} must be one of {', '.join(map(repr, valid))}, got {value!r}.")


def _from_dict(cls: type, cfg: dict[str, Any] | None, where: str) -> Any:
    cfg = dict(cfg or {})
    if not isinstance(cfg, dict):
        raise DDBenchError(f"{where} must be a mapping of options, got {cfg!r}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise DDBenchError(f"unknown {where} option(s) {unknown}; valid options: {sorted(known)}.")
    check_option_types(cls, cfg, where)
    return cls(**cfg)


@dataclass
class FullDataConfig:
    """How the full-real-data reference of HLR is trained: the protocol's hard-label recipe with these changes.

    lr null = the protocol's lr (never a learned lr).
    """

    epochs: int = 200
    batch_size: int = 256
    lr: float | None = None


@dataclass
class EvalProtocol(TrainRecipe):
    """A named training recipe (conf/eval/*.yaml): the TrainRecipe fields plus what the evaluator needs.

    kind dc resolves to SGD with the step schedule: lr × lr_decay_factor once, at int(epochs · lr_decay_at),
    where the momentum buffers are also reset (as the reference re-creates its SGD), and the soft loss at
    T = 1; epochs is used with augmentation, epochs_no_aug without. kind kd uses optimizer, schedule,
    augment, mixup/cutmix, temperature and label_source as given. Only fields whose default differs from
    TrainRecipe's are redeclared here.
    """

    name: str = "dc"
    kind: str = "dc"
    epochs: int = 1000
    epochs_no_aug: int = 300
    learned_lr: bool = True
    augment: str = "dsa"
    num_seeds: int = 5
    seed_base: int = 0
    models: list[str] = field(default_factory=lambda: ["convnet", "alexnet", "vgg11", "resnet18_ap"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    test_batch_size: int = 1024
    vmap: bool | str = "auto"
    compile: bool | str = "auto"  # torch.compile the training forwards (auto: long runs on CPUs; see NetworkBatch)
    checkpoint_minutes: float = 10.0  # save a training run's state this often (0 = never); a rerun resumes it
    label_source: str = "artifact"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # label_source=teacher: the teacher's BatchNorm while it relabels a batch: eval (running statistics) or train
    # (each network's batch normalised with its own statistics, running statistics untouched; SRe2L/CDA CIFAR)
    teacher_bn: str = "eval"
    # INFER artifacts: relabel with the teachers the artifact records, epochs rescaled to their count (see
    # ddbench.evaluation.derive), unless eval.teacher / eval.epochs differ from the protocol file's values
    artifact_teacher: bool = False
    # --- fair scores and model selection
    scores: list[str] = field(default_factory=list)
    score_weight: float = 0.5  # w of LRS: alpha = w*IOR - (1-w)*HLR
    ars_weight: float = 0.5  # gamma of ARS
    full_data: FullDataConfig = field(default_factory=FullDataConfig)
    lr_grid: list[float] | None = None  # chosen on a validation split held out of train
    # DQ's rule: a set of at most small_set_fraction of the train split trains with small_set_batch_size (null = off)
    small_set_fraction: float | None = None
    small_set_batch_size: int = 16
    val_fraction: float = 0.1  # per class
    val_seed: int = 0
    smoke: dict[str, Any] = field(default_factory=dict)  # applied by the pipeline under smoke=true

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "EvalProtocol":
        cfg = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DDBenchError(f"unknown eval option(s) {unknown}; valid options: {sorted(known)}.")
        check_option_types(cls, cfg, "eval")
        cfg["teacher"] = _from_dict(TeacherConfig, cfg.get("teacher"), "eval.teacher")
        cfg["full_data"] = _from_dict(FullDataConfig, cfg.get("full_data"), "eval.full_data")
        proto = cls(**cfg)
        proto.models = list(proto.models)
        proto.model_kwargs = {k: dict(v) for k, v in (proto.model_kwargs or {}).items()}
        proto.teacher.models = list(proto.teacher.models)
        proto.teacher.model_kwargs = {k: dict(v) for k, v in (proto.teacher.model_kwargs or {}).items()}
        proto.scores = [str(s).lower() for s in (proto.scores or [])]
        proto.lr_grid = None if proto.lr_grid is None else [float(v) for v in proto.lr_grid]
        proto.smoke = dict(proto.smoke or {})
        proto.validate()
        return proto

    def validate(self) -> None:
        self._check_ranges()
        _check_choice("kind", self.kind, KINDS)
        self.check_recipe("eval")
        if self.optimizer == "gsam":
            raise DDBenchError("eval.optimizer must be 'sgd' or 'adamw' ('gsam' is for experts).")
        if self.kind == "dc" and self.augment == "crop_flip":
            raise DDBenchError("eval.augment=crop_flip needs eval.kind=kd; kind dc supports 'dsa' or 'none'.")
        _check_choice("label_source", self.label_source, LABEL_SOURCES)
        _check_choice("teacher_bn", self.teacher_bn, TEACHER_BN)
        _check_choice("compile", self.compile, COMPILE_CHOICES)
        if self.kind == "dc" and self.label_source not in ("artifact", "hard"):
            raise DDBenchError(f"eval.label_source={self.label_source!r} needs eval.kind=kd "
                               "(kind dc trains on the artifact's labels).")
        if self.kind == "dc" and (self.mixup or self.cutmix):
            raise DDBenchError("eval.mixup/eval.cutmix need eval.kind=kd.")
        if self.num_seeds < 1 or not self.models:
            raise DDBenchError("eval.num_seeds must be >= 1 and eval.models must name at least one model.")
        unknown = sorted(set(self.scores) - set(SCORES))
        if unknown:
            raise DDBenchError(f"unknown eval.scores {unknown}; valid scores: {', '.join(SCORES)}.")
        if not 0 <= self.score_weight <= 1 or not 0 <= self.ars_weight <= 1:
            raise DDBenchError("eval.score_weight and eval.ars_weight must be in [0, 1].")
        if self.lr_grid is not None and (not self.lr_grid or any(not lr > 0 for lr in self.lr_grid)):
            raise DDBenchError(f"eval.lr_grid must be null or a non-empty list of positive lrs, got {self.lr_grid}.")
        if self.small_set_fraction is not None and not 0 < self.small_set_fraction <= 1:
            raise DDBenchError(f"eval.small_set_fraction must be null or in (0, 1], got {self.small_set_fraction}.")
        if self.small_set_batch_size < 1:
            raise DDBenchError(f"eval.small_set_batch_size must be >= 1, got {self.small_set_batch_size}.")
        if not 0 < self.val_fraction < 1:
            raise DDBenchError(f"eval.val_fraction must be in (0, 1), got {self.val_fraction}.")
        if not self.teacher.models:
            raise DDBenchError("eval.teacher.models must name at least one model.")
        self.teacher.check_recipe("eval.teacher")

    def _check_ranges(self) -> None:
        """Counts >= 1, rates > 0, fractions in [0, 1] (types are checked by from_dict)."""
        counts = {"epochs": self.epochs, "epochs_no_aug": self.epochs_no_aug, "num_seeds": self.num_seeds,
                  "batch_size": self.batch_size, "test_batch_size": self.test_batch_size,
                  "teacher.epochs": self.teacher.epochs, "teacher.batch_size": self.teacher.batch_size,
                  "full_data.epochs": self.full_data.epochs, "full_data.batch_size": self.full_data.batch_size}
        for name, value in counts.items():
            if value < 1:
                raise DDBenchError(f"eval.{name} must be >= 1, got {value!r}.")
        rates = {"lr": self.lr, "lr_decay_factor": self.lr_decay_factor, "teacher.lr": self.teacher.lr}
        if self.full_data.lr is not None:
            rates["full_data.lr"] = self.full_data.lr
        for name, value in rates.items():
            if not (value > 0 and math.isfinite(value)):
                raise DDBenchError(f"eval.{name} must be a finite number > 0, got {value!r}.")
        for name, value in {"momentum": self.momentum, "teacher.momentum": self.teacher.momentum,
                            "lr_decay_at": self.lr_decay_at}.items():
            if not 0 <= value <= 1:
                raise DDBenchError(f"eval.{name} must be in [0, 1], got {value!r}.")
        for name, value in {"weight_decay": self.weight_decay, "teacher.weight_decay": self.teacher.weight_decay,
                            "seed_base": self.seed_base,
                            "checkpoint_minutes": self.checkpoint_minutes}.items():
            if value < 0:
                raise DDBenchError(f"eval.{name} must be >= 0, got {value!r}.")

    def for_data(self, info: Any) -> "EvalProtocol":
        """This protocol with its and its teacher's crop_padding/flip 'auto' resolved for dataset `info`."""
        return replace(TrainRecipe.for_data(self, info), teacher=self.teacher.for_data(info))

    def sized_for(self, n_images: int, n_train: int) -> "EvalProtocol":
        """This protocol for a set of n_images out of a train split of n_train: its batch is small_set_batch_size
        when n_images / n_train <= small_set_fraction (DQ's validation rule), else batch_size."""
        if self.small_set_fraction is None or n_images > self.small_set_fraction * n_train:
            return self
        return replace(self, batch_size=self.small_set_batch_size)

    @property
    def seeds(self) -> list[int]:
        return [self.seed_base + i for i in range(self.num_seeds)]

    @property
    def train_epochs(self) -> int:
        return self.epochs_no_aug if self.augment == "none" else self.epochs

    def recipe(self, lr: float) -> TrainRecipe:
        """The trainer's recipe of this protocol at learning rate `lr` (kind dc: SGD, step schedule, T = 1)."""
        changes: dict[str, Any] = {"epochs": self.train_epochs, "lr": lr}
        if self.kind == "dc":
            changes.update(optimizer="sgd", schedule="step", temperature=1.0, t2_scaling=False)
        return TrainRecipe.of(self, **changes)

    def hard_variant(self) -> "EvalProtocol":
        """The same recipe trained on hard labels (no teacher, no target mixing): the "syn-hard" of HLR."""
        return replace(self, label_source="hard", mixup=0.0, cutmix=0.0)

    def without_augmentation(self) -> "EvalProtocol":
        """The same recipe without batch augmentation or mixing, for the same number of epochs (ARS)."""
        return replace(self, augment="none", epochs_no_aug=self.train_epochs, mixup=0.0, cutmix=0.0)

    def recipe_key(self) -> dict[str, Any]:
        """What determines a trained network's accuracy, apart from the model, the data, the lr and the seeds."""
        out = self.to_dict()
        for name in ("name", "models", "model_kwargs", "test_batch_size", "vmap", "compile", "scores", "score_weight",
                     "ars_weight", "smoke", "num_seeds", "seed_base", "full_data", "learned_lr", "checkpoint_minutes",
                     "small_set_fraction", "small_set_batch_size"):  # the rule's result is in batch_size
            out.pop(name, None)
        out.pop("teacher", None)  # added by the caller when a teacher produces the targets
        out.pop("artifact_teacher", None)  # applied before training (the teacher and epochs it set are here)
        out.pop("teacher_bn", None)  # part of the teacher's key (Evaluator.teacher_key), like the teacher
        out["train_epochs"] = self.train_epochs
        return without_neutral(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
