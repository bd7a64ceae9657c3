"""Training recipes: what the one training engine needs to train networks on one set, and the teacher recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

AUGMENTS = ("dsa", "crop_flip", "none")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")


@dataclass
class TrainRecipe:
    """Everything the kd trainer needs to train networks on one set (derived from a protocol or a teacher)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_at: float = 0.5
    lr_decay_factor: float = 0.1
    augment: str = "crop_flip"
    crop_padding: int = 4
    flip: bool = True
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_space: str = "logits"
    temperature: float = 1.0
    t2_scaling: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherConfig:
    """The teacher (or ensemble: one member per entry of `models`) ddbench trains itself on the full real train set.

    Member i is initialised and trained from seed `seed + i`; each member is cached (Cache kind "teachers") under
    the data fingerprint, its model and this recipe.
    """

    models: list[str] = field(default_factory=lambda: ["convnet"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.01
    optimizer: str = "sgd"
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop_flip"
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            schedule=self.schedule, momentum=self.momentum, weight_decay=self.weight_decay, augment=self.augment,
            crop_padding=self.crop_padding, flip=self.flip,
        )
