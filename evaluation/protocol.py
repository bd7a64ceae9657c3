"""Evaluation protocols: the recipe a fresh network is trained with on a synthetic set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ddbench.utils import DDBenchError


@dataclass
class EvalProtocol:
    """A named training recipe (conf/eval/*.yaml). `dc` is the shared hard-label protocol.

    epochs is used with augmentation, epochs_no_aug without; lr is multiplied by lr_decay_factor once, at
    int(epochs * lr_decay_at), when the momentum buffers are also reset (as the reference re-creates its SGD).
    """

    name: str = "dc"
    epochs: int = 1000
    epochs_no_aug: int = 300
    lr: float = 0.01
    learned_lr: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    lr_decay_at: float = 0.5
    lr_decay_factor: float = 0.1
    augment: str = "dsa"
    num_seeds: int = 5
    seed_base: int = 0
    models: list[str] = field(default_factory=lambda: ["convnet", "alexnet", "vgg11", "resnet18_ap"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    test_batch_size: int = 1024
    vmap: bool | str = "auto"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "EvalProtocol":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DDBenchError(f"unknown eval option(s) {unknown}; valid options: {sorted(known)}.")
        proto = cls(**cfg)
        proto.models = list(proto.models)
        proto.model_kwargs = {k: dict(v) for k, v in (proto.model_kwargs or {}).items()}
        if proto.augment not in ("dsa", "none"):
            raise DDBenchError(f"eval.augment must be 'dsa' or 'none', got {proto.augment!r}.")
        if proto.num_seeds < 1 or not proto.models:
            raise DDBenchError("eval.num_seeds must be >= 1 and eval.models must name at least one model.")
        return proto

    @property
    def seeds(self) -> list[int]:
        return [self.seed_base + i for i in range(self.num_seeds)]

    @property
    def train_epochs(self) -> int:
        return self.epochs if self.augment == "dsa" else self.epochs_no_aug

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
