"""The ConvNet family of the dataset-distillation literature (DC/DSA/DM/MTT).

Block = Conv3x3(width) → norm → ReLU → pool. 1-channel 28-px inputs get padding 3 in the first conv (28→32),
so the feature map size is computed as for 32 px. Default depth: 3 (≤32 px), 4 (64 px), 5 (128 px).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ddbench.models.features import TappedSequential, activation_taps
from ddbench.models.options import Choice, IntRange
from ddbench.models.registry import register_model
from ddbench.utils import DDBenchError

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}
POOLINGS = {"avgpool": lambda: nn.AvgPool2d(2, 2), "maxpool": lambda: nn.MaxPool2d(2, 2), "none": nn.Identity}


def make_norm(kind: str, channels: int, size: int) -> nn.Module:
    """instancenorm = GroupNorm(C, C) (affine), as in the reference code; layernorm is over (C,H,W)."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.LayerNorm([channels, size, size], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise DDBenchError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}.")


def default_depth(image_size: int) -> int:
    return 5 if image_size >= 128 else 4 if image_size >= 64 else 3


def max_depth(channels: int, image_size: int) -> int:
    """The deepest ConvNet whose last map is still >= 1x1 (1-channel 28-px inputs are padded to 32)."""
    size = 32 if (channels == 1 and image_size == 28) else image_size
    return size.bit_length() - 1


def depth_rule(options: Mapping[str, Any], channels: int, image_size: int) -> tuple[str, str] | None:
    """ConvNet's depth against the images' size (the declared options' shape rule)."""
    depth = options.get("depth") or default_depth(image_size)
    limit = max_depth(channels, image_size)
    if depth > limit:
        return "depth", f"is too deep for {image_size}px images; use depth <= {limit}"
    return None


class ConvNet(TappedSequential):
    """x [B,C,H,W] → logits [B,num_classes]. feature_maps: the post-activation map of each block, before its
    pooling: depth tensors [B, width, H_d, W_d] (H_d = H / 2^d for d = 0..depth-1 with pooling)."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int | None = None,
        norm: str = "instancenorm",
        activation: str = "relu",
        pooling: str = "avgpool",
    ):
        super().__init__()
        depth = default_depth(image_size) if depth is None else depth
        size = 32 if (channels == 1 and image_size == 28) else image_size
        if not 1 <= depth <= max_depth(channels, image_size):
            raise DDBenchError(f"ConvNet depth {depth} does not fit {image_size}px images; use a depth in "
                               f"[1, {max_depth(channels, image_size)}].")
        acts, pools = ACTIVATIONS, POOLINGS
        if activation not in acts or pooling not in pools:
            raise DDBenchError(f"ConvNet activation must be one of {list(acts)} and pooling one of {list(pools)}.")
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(depth):
            pad = 3 if (d == 0 and channels == 1 and image_size == 28) else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), make_norm(norm, width, size), acts[activation]()]
            if pooling != "none":
                layers.append(pools[pooling]())
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)
        self.taps = activation_taps(self.features)


def convnet_options(norm: Choice) -> dict:
    """ConvNet's declared options, with `norm` as given (the _bn variant accepts only batchnorm)."""
    return {"width": IntRange(1), "depth": IntRange(1, note="null: 3 up to 32 px, 4 at 64 px, 5 at 128 px", suggest=3),
            "norm": norm, "activation": Choice(tuple(ACTIVATIONS)), "pooling": Choice(tuple(POOLINGS))}


@register_model("convnet", builds=ConvNet, options=convnet_options(Choice(NORMS)), rule=depth_rule)
def convnet(channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    return ConvNet(channels, num_classes, image_size, **kwargs)


BN_ONLY = Choice(("batchnorm",), note="the _bn variant is BatchNorm; the model without _bn takes other norms")


@register_model("convnet_bn", builds=ConvNet, options=convnet_options(BN_ONLY), rule=depth_rule)
def convnet_bn(channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    kwargs["norm"] = "batchnorm"
    return ConvNet(channels, num_classes, image_size, **kwargs)
