"""S networks of one architecture, one per seed, trained in lock-step on the device."""

from __future__ import annotations

import logging
import shutil
from typing import Any

import torch
from torch import nn

from ddbench.data import DatasetInfo
from ddbench.models import batched_forward, create_model, stack_state, supports_vmap_training
from ddbench.utils import DDBenchError, stable_hash

log = logging.getLogger(__name__)

# compile="auto" compiles a looped (CPU) batch of networks whose training has at least this many optimisation
# steps: compiling takes 20-40 s once per shape, and fusing norm/activation/pool saves ~25 % of a CPU step.
COMPILE_MIN_STEPS = 2000
COMPILE_CHOICES = ("auto", True, False)


def compile_wanted(setting: bool | str, device: torch.device, steps: int) -> bool:
    """Whether to train with torch.compile: True/False as given; "auto" on CPUs with a C++ compiler on PATH
    (inductor needs one) for runs of at least COMPILE_MIN_STEPS steps. GPUs train vmapped, uncompiled."""
    if setting not in COMPILE_CHOICES:
        raise DDBenchError(f"compile must be one of auto, true, false; got {setting!r}.")
    if setting != "auto":
        return bool(setting)
    has_compiler = any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
    return torch.device(device).type == "cpu" and has_compiler and steps >= COMPILE_MIN_STEPS


def init_model(name: str, info: DatasetInfo, seed: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model whose weights depend only on (name, kwargs, seed), not on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, info.channels, info.num_classes, info.image_size, **kwargs)


def layout_digest(model_cfg: dict[str, Any], info: DatasetInfo) -> str:
    """A hash of the printed layout (modules, their shapes and order) of the network `model_cfg` ({"name": ...,
    **options}) built for `info`'s images.

    Cached products trained with a network (teachers, experts, embeddings, distillation checkpoints) carry it in
    their keys, so a change of an architecture's layout (say, where VGG-11 pools below 32 px) never reuses what the
    old layout trained, while edits elsewhere in the code keep them. Built each time (a ResNet-18 takes ~0.1 s), so
    a class edited in a running notebook counts too; built by init_model, so the global RNG is left as it was."""
    options = {k: v for k, v in model_cfg.items() if k != "name"}
    return stable_hash(repr(init_model(model_cfg["name"], info, 0, **options)))


class NetworkBatch:
    """Networks for `seeds`, stacked for torch.func.vmap when the architecture allows, else kept as a list.

    forward(x [S,B,C,H,W]) → logits [S,B,K]. parameters() lists leaf tensors for one optimizer: SGD's update is
    elementwise, so one optimizer over stacked tensors trains every network exactly as if alone.
    compile=True runs the training forwards (those with gradients) of looped networks through torch.compile,
    fixed shapes (a run has at most two batch sizes); forwards without gradients (testing) stay eager. If
    compiling fails, the batch falls back to eager modules with a warning.
    """

    def __init__(
        self, name: str, info: DatasetInfo, seeds: list[int], device: torch.device, vmap: bool | str = "auto",
        compile: bool = False, **kwargs: Any
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
        self.compiled = [torch.compile(m, dynamic=False) for m in models] if compile and not self.vmapped else None

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
        if self.compiled is not None and torch.is_grad_enabled():
            try:
                return torch.stack([model(xs) for model, xs in zip(self.compiled, x)])
            except Exception as err:  # noqa: BLE001 - a compiler problem must not cost the run: train eagerly
                log.warning("torch.compile failed for %s (%s); training without it.", self.name,
                            str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
                self.compiled = None
        return torch.stack([model(xs) for model, xs in zip(self.models, x)])

    __call__ = forward

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every network's parameters and buffers by name (the tensors themselves, to save or restore in place)."""
        if self.vmapped:
            return {**{f"param.{k}": v for k, v in self.params.items()},
                    **{f"buffer.{k}": v for k, v in self.buffers.items()}}
        return {f"net{i}.{k}": v for i, model in enumerate(self.models)
                for k, v in model.state_dict(keep_vars=True).items()}

    def all_finite(self) -> torch.Tensor:
        """0-d bool tensor: every parameter of every network is finite."""
        return torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()
