"""EfficientNet-B0 for small images (the CIFAR variant INFER trains as one of its teachers), with BatchNorm.

MBConv blocks: expand 1x1 → depthwise k×k → squeeze-excitation → project 1x1, BatchNorm after each conv, swish
(SiLU) after the first two; a residual sum where the block keeps its shape. The seven B0 stages (expansion, out,
blocks, kernel, stride) follow a 3x3 stride-1 stem of 32 channels with strides (1, 2, 2, 2, 1, 2, 1): an overall
stride of 16, so a 32-px input ends on a 2x2 map (timm's `efficientnet_b0`, built for 224 px, has a stride-2 stem
and ends on 1x1 at 32 px). As in the CIFAR reference there is no 1x1 head conv to 1280: the classifier reads the
global average of the last stage's 320 channels.

Blocks of expansion 1 (stage 1) have no expand conv. The reference builds an expand BatchNorm there that its
forward never uses (INFER's recover drops that layer from its BN loss); here it does not exist.
`dropout` (before the classifier) and `drop_connect` (per-sample stochastic depth of the residual blocks, its rate
growing linearly with depth) default to 0, where the reference uses 0.2 and 0.2: their masks would be drawn from
torch's global generator, not from the trainer's seeded draws. Works at 16/28/32/64 px.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.models.features import Maps
from ddbench.models.options import Number
from ddbench.models.registry import register_model

# (expansion, out channels, blocks, kernel, stride) per stage: EfficientNet-B0 with CIFAR strides
B0_CIFAR = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2), (6, 112, 3, 5, 1),
            (6, 192, 4, 5, 2), (6, 320, 1, 3, 1))
STEM = 32
SE_RATIO = 0.25  # squeeze width = SE_RATIO x the block's input channels


class SqueezeExcite(nn.Module):
    """x [B,C,H,W] → x · sigmoid(W2 swish(W1 mean_hw(x))) with 1x1 convs C → squeeze → C (with biases)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """One inverted-residual block [B,C_in,H,W] → [B,C_out,H/stride,W/stride]."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, kernel: int, stride: int,
                 drop_connect: float = 0.0):
        super().__init__()
        planes = expansion * in_planes
        self.expand: nn.Module | None = None
        if expansion != 1:
            self.expand = nn.Sequential(nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(planes, planes, kernel, stride=stride, padding=(kernel - 1) // 2, groups=planes, bias=False),
            nn.BatchNorm2d(planes), nn.SiLU())
        self.se = SqueezeExcite(planes, max(1, int(in_planes * SE_RATIO)))
        self.project = nn.Sequential(nn.Conv2d(planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))
        self.residual = stride == 1 and in_planes == out_planes
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.se(self.depthwise(out)))
        if not self.residual:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = (torch.rand_like(out[:, :1, :1, :1]) < keep).to(out.dtype)  # [B,1,1,1], vmap-safe draws
            out = out * mask / keep
        return out + x


class EfficientNetB0(nn.Module):
    """x [B,C,H,W] → logits [B,K]; embed(x) → [B,320·width]; feature_maps(x) → the stem's map and each stage's
    output, 8 maps [B,C_l,H_l,W_l] (the last [B,320,2,2] at 32 px). width scales every channel count."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: float = 1.0, dropout: float = 0.0,
                 drop_connect: float = 0.0):
        super().__init__()
        scaled = lambda c: max(8, int(round(c * width)))  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(channels, scaled(STEM), 3, padding=1, bias=False),
                                  nn.BatchNorm2d(scaled(STEM)), nn.SiLU())
        total = sum(stage[2] for stage in B0_CIFAR)
        stages, in_planes, index = [], scaled(STEM), 0
        for expansion, out, count, kernel, stride in B0_CIFAR:
            blocks = []
            for i in range(count):
                blocks.append(MBConv(in_planes, scaled(out), expansion, kernel, stride if i == 0 else 1,
                                     drop_connect * index / total))
                in_planes, index = scaled(out), index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_planes, num_classes)

    def feature_maps(self, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
        """The stem's post-swish map and each of the 7 stages' outputs; with embedding=True also embed(x)."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return (maps, F.adaptive_avg_pool2d(maps[-1], 1).flatten(1)) if embedding else maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))


RATE = Number(0, 1, high_open=True)


@register_model("efficientnet_b0_cifar", builds=EfficientNetB0,
                options={"width": Number(0, low_open=True, note="a multiplier of every channel count"),
                         "dropout": RATE, "drop_connect": RATE})
def efficientnet_b0_cifar(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    return EfficientNetB0(channels, num_classes, image_size, **kwargs)
