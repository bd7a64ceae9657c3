"""Train or evaluate S identically-shaped models at once with `torch.func.vmap`.

The state of S models (one per seed) is stacked along a new leading dim; one template module supplies the
computation. BatchNorm works in train mode too: its running statistics are stacked buffers and are updated
in place per model (the dicts returned by `stack_state` are mutated by `batched_forward`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ddbench.utils import DDBenchError


def _persistent_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Buffers that belong in the state_dict; non-persistent ones are constants the template supplies."""
    keys = set(model.state_dict().keys())
    return {name: buf for name, buf in model.named_buffers() if name in keys}


def stack_state(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Params and (persistent) buffers of identically-shaped models, stacked on a new leading dim [S, ...].

    Params are fresh leaf tensors with requires_grad=True; buffers are fresh copies. Nothing is shared with
    the input models.
    """
    models = list(models)
    if not models:
        raise DDBenchError("stack_state needs at least one model.")
    all_params = [dict(m.named_parameters()) for m in models]
    all_buffers = [_persistent_buffers(m) for m in models]
    for i, (p, b) in enumerate(zip(all_params, all_buffers)):
        for kind, ref, cur in (("parameters", all_params[0], p), ("buffers", all_buffers[0], b)):
            if ref.keys() != cur.keys() or any(ref[k].shape != cur[k].shape for k in ref):
                raise DDBenchError(f"stack_state: model {i} has different {kind} than model 0; build all models alike.")
    params = {
        k: torch.stack([p[k].detach() for p in all_params]).clone().requires_grad_(True) for k in all_params[0]
    }
    buffers = {k: torch.stack([b[k].detach() for b in all_buffers]).clone() for k in all_buffers[0]}
    return params, buffers


def batched_forward(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
    """x [S, B, C, H, W] → logits [S, B, K]: model s runs on x[s] with params[.][s] and buffers[.][s].

    `model` is only a template (its own parameter values are not used); its train/eval mode is. In train
    mode, BatchNorm running statistics in `buffers` are updated in place. Dropout draws different masks
    per model.
    """
    first = next(iter(params.values()), None)
    if first is not None and x.shape[0] != first.shape[0]:
        raise DDBenchError(f"batched_forward: x has {x.shape[0]} model slices but params are stacked for {first.shape[0]}.")

    def one(p: dict[str, Tensor], b: dict[str, Tensor], xs: Tensor) -> Tensor:
        return functional_call(model, (p, b), (xs,))

    return vmap(one, in_dims=(0, 0, 0), randomness="different")(params, buffers, x)


def _unsafe_modules(model: nn.Module) -> list[str]:
    bad = []
    for name, module in model.named_modules():
        if isinstance(module, nn.SyncBatchNorm):
            bad.append(f"{name or '<root>'} (SyncBatchNorm)")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            # momentum=None (cumulative average) reads num_batches_tracked as a Python float: not vmappable.
            if module.track_running_stats and module.momentum is None:
                bad.append(f"{name or '<root>'} (BatchNorm with momentum=None)")
        elif isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
            bad.append(f"{name or '<root>'} (InstanceNorm with running stats)")
        elif isinstance(module, nn.RNNBase):
            bad.append(f"{name or '<root>'} (RNN)")
    return bad


def supports_vmap_training(model: nn.Module) -> bool:
    """Whether `batched_forward` can train copies of `model` (judged by module types).

    Plain BatchNorm is supported: with stacked running-stat buffers, vmap applies the in-place running-stat
    updates per model, which matches training each model on its own. Not supported: SyncBatchNorm,
    BatchNorm with momentum=None, InstanceNorm with running stats, and recurrent modules.
    """
    return not _unsafe_modules(model)


def unstack_state(params: dict[str, Tensor], buffers: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """The state_dict of model `index`, loadable with `load_state_dict` into a freshly built model."""
    state = {k: v[index].detach().clone() for k, v in params.items()}
    state.update({k: v[index].detach().clone() for k, v in buffers.items()})
    return state
