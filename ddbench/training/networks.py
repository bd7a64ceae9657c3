"""S networks of one architecture, one per seed, trained in lock-step on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ddbench.data import DatasetInfo
from ddbench.models import batched_forward, create_model, stack_state, supports_vmap_training


def init_model(name: str, info: DatasetInfo, seed: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model whose weights depend only on (name, kwargs, seed), not on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, info.channels, info.num_classes, info.image_size, **kwargs)


class NetworkBatch:
    """Networks for `seeds`, stacked for torch.func.vmap when the architecture allows, else kept as a list.

    forward(x [S,B,C,H,W]) → logits [S,B,K]. parameters() lists leaf tensors for one optimizer: SGD's update is
    elementwise, so one optimizer over stacked tensors trains every network exactly as if alone.
    """

    def __init__(
        self, name: str, info: DatasetInfo, seeds: list[int], device: torch.device, vmap: bool | str = "auto", **kwargs: Any
    ):
        self.name = name
        self.seeds = list(seeds)
        models = [init_model(name, info, s, **kwargs).to(device) for s in self.seeds]
        if vmap == "auto":  # vmapped convolutions pay off on GPUs; on CPUs a loop over seeds is faster
            vmap = torch.device(device).type == "cuda"
        self.vmapped = bool(vmap) and supports_vmap_training(models[0])
        if self.vmapped:
            self.template = models[0]
            self.params, self.buffers = stack_state(models)
        else:
            self.models = nn.ModuleList(models)

    def __len__(self) -> int:
        return len(self.seeds)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values()) if self.vmapped else list(self.models.parameters())

    def train(self, mode: bool = True) -> "NetworkBatch":
        (self.template if self.vmapped else self.models).train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vmapped:
            return batched_forward(self.template, self.params, self.buffers, x)
        return torch.stack([model(xs) for model, xs in zip(self.models, x)])

    __call__ = forward

    def all_finite(self) -> torch.Tensor:
        """0-d bool tensor: every parameter of every network is finite."""
        return torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()
