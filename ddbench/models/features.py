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


class TappedSequential(nn.Module):
    """A model that runs `features` (an nn.Sequential, read at its activations: `taps`), flattens, passes that
    through `neck` (nothing by default; LeNet's fully connected layers) and then `classifier`. Subclasses build
    `features`, `classifier` and `taps = activation_taps(features)`; this class answers embed, feature_maps and
    forward for all of them."""

    features: nn.Sequential
    classifier: nn.Module
    taps: tuple[int, ...]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What `features` reads: x [B, C, H, W] itself (an MLP flattens it)."""
        return x

    def neck(self, flat: torch.Tensor) -> torch.Tensor:
        """The layers between the flattened features [B, F] and the embedding [B, D]: none by default."""
        return flat

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, D]."""
        return self.neck(self.features(self.inputs(x)).flatten(1))

    def feature_maps(self, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
        """The outputs of the activations of `features`, shallow to deep; with embedding=True also embed(x)."""
        out, maps = run_tapped(self.features, self.inputs(x), self.taps)
        return (maps, self.neck(out.flatten(1))) if embedding else maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def feature_maps(model: nn.Module, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
    """`model.feature_maps(x, embedding)`, or a clear error for models without the API (e.g. timm models)."""
    method = getattr(model, "feature_maps", None)
    if method is None:
        raise DDBenchError(
            f"{type(model).__name__} has no feature_maps(); use a built-in model (convnet, alexnet, vgg11, resnet18*, "
            "lenet, mlp) for methods that need intermediate feature maps."
        )
    return method(x, embedding=embedding)
