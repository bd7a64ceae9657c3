"""MobileNetV2 for small images (the CIFAR variant INFER trains as one of its teachers), with BatchNorm.

Inverted residual blocks (expand 1x1 → depthwise 3x3 → project 1x1, BN after each, ReLU after the first two),
config (expansion, out, blocks, stride) as in the CIFAR version: a 3x3 stride-1 stem of 32 channels, strides 1
where ImageNet has 2 in the first two stages, a 1x1 conv to 1280, global average pool, linear head.
Works at 16/28/32/64 px (overall stride 8).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.models.options import Number
from ddbench.models.registry import register_model

CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """x [B,C,H,W] → logits [B,K]; embed(x) → [B,1280]. width scales every channel count."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: float = 1.0):
        super().__init__()
        scaled = lambda c: max(8, int(round(c * width)))  # noqa: E731
        self.conv1 = nn.Conv2d(channels, scaled(32), 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(scaled(32))
        blocks, in_planes = [], scaled(32)
        for expansion, out, count, stride in CIFAR_CFG:
            for i in range(count):
                blocks.append(InvertedResidual(in_planes, scaled(out), expansion, stride if i == 0 else 1))
                in_planes = scaled(out)
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, scaled(1280), 1, bias=False)
        self.bn2 = nn.BatchNorm2d(scaled(1280))
        self.classifier = nn.Linear(scaled(1280), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_model("mobilenetv2_cifar", builds=MobileNetV2,
                options={"width": Number(0, low_open=True, note="a multiplier of every channel count")})
def mobilenetv2_cifar(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    return MobileNetV2(channels, num_classes, image_size, **kwargs)
