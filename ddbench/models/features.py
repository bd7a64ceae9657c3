"""The feature-map API shared by the model zoo.

Every built-in model (ConvNet family, AlexNet, VGG, ResNets, LeNet, MLP) answers
``model.feature_maps(x, embedding=False)``: the intermediate activations of one forward pass, shallow to deep.

* convolutional models: a list of post-activation maps [B, C_l, H_l, W_l] (ConvNet: one per block, after the
  block's activation and before its pooling; ResNets: the stem and each stage's output);
* MLP: a list of post-activation hidden vectors [B, D_l].

With ``embedding=True`` it returns ``(maps, e)`` where ``e`` [B, D] equals ``model.embed(x)``, from the same pass.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ddbench.utils import DDBenchError

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.GELU, nn.Tanh)

Maps = list[torch.Tensor]


def activation_taps(layers: Iterable[nn.Module]) -> tuple[int, ...]:
    """Indices of the activation modules of a Sequential: where its feature maps are read."""
    return tuple(i for i, layer in enumerate(layers) if isinstance(layer, ACTIVATIONS))


def run_tapped(layers: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> tuple[torch.Tensor, Maps]:
    """Run `layers` on x; returns (final output, outputs of the layers at `taps`)."""
    maps = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            maps.append(x)
    return x, maps


def feature_maps(model: nn.Module, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
    """`model.feature_maps(x, embedding)`, or a clear error for models without the API (e.g. timm models)."""
    method = getattr(model, "feature_maps", None)
    if method is None:
        raise DDBenchError(
            f"{type(model).__name__} has no feature_maps(); use a built-in model (convnet, alexnet, vgg11, resnet18*, "
            "lenet, mlp) for methods that need intermediate feature maps."
        )
    return method(x, embedding=embedding)
