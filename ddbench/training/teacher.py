"""Teachers for soft-label protocols: trained by ddbench on the full real train set, cached, never downloaded."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.training.networks import NetworkBatch, init_model
from ddbench.training.recipe import TeacherConfig
from ddbench.training.trainer import train
from ddbench.utils import DDBenchError, make_generator, stable_hash

log = logging.getLogger(__name__)

STATE_PREFIX = "state."


class Teacher:
    """An ensemble of trained models in eval mode; calling it returns the mean of the members' logits.

    __call__(x [B,C,H,W]) → [B,K] (no gradient); logits(images) does the same over a whole set in chunks.
    """

    def __init__(self, members: list[nn.Module], names: list[str], chunk: int = 4096):
        self.members = [m.eval() for m in members]
        for m in self.members:
            m.requires_grad_(False)
        self.names = names
        self.chunk = chunk

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


def teacher_key(cfg: TeacherConfig, splits: Splits, index: int) -> dict[str, Any]:
    from ddbench.training.embedding import data_fingerprint

    name = cfg.models[index]
    return {
        "data": data_fingerprint(splits), "model": name, "model_kwargs": cfg.model_kwargs.get(name, {}),
        "recipe": cfg.recipe().to_dict(), "seed": cfg.seed + index, "init": "teacher-init",
    }


def teacher_init_seed(name: str, seed: int) -> int:
    """The initialisation seed of a teacher member: derived from ("teacher", name, seed), so a teacher never
    starts from the weights of the evaluation network with the same seed."""
    return int(stable_hash(["teacher-init", name, int(seed)], 8), 16)


def train_teacher_member(cfg: TeacherConfig, splits: Splits, index: int, device: torch.device,
                         progress: bool = False) -> nn.Module:
    """Member `index` of the ensemble trained on splits.train with hard labels and the teacher recipe."""
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
def train_accuracy(model: nn.Module, splits: Splits, batch_size: int = 1024) -> float:
    model.eval()
    x, y = splits.train.images, splits.train.labels
    correct = sum(int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def load_teacher(cfg: TeacherConfig, splits: Splits, device: torch.device, cache: Cache | None = None,
                 progress: bool = False) -> Teacher:
    """The teacher ensemble of `cfg`: each member from the cache (kind "teachers"), trained on a miss."""
    cache = cache or Cache()
    members = []
    for index, name in enumerate(cfg.models):
        key = teacher_key(cfg, splits, index)

        def build(index: int = index) -> dict[str, torch.Tensor]:
            model = train_teacher_member(cfg, splits, index, device, progress)
            acc = train_accuracy(model, splits)
            log.info("teacher %s (seed %d): %.2f %% accuracy on the real train set", cfg.models[index],
                     cfg.seed + index, 100 * acc)
            tensors = {STATE_PREFIX + k: v for k, v in model.state_dict().items()}
            tensors["train_accuracy"] = torch.tensor(acc)
            return tensors

        tensors = cache.get_or_create("teachers", key, build, required=("train_accuracy",))
        state = {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
        model = init_model(name, splits.info, teacher_init_seed(name, cfg.seed + index),
                           **cfg.model_kwargs.get(name, {})).to(device)
        model.load_state_dict(state)
        members.append(model)
    return Teacher(members, list(cfg.models))
