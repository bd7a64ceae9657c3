"""The BatchNorm teachers of the recover methods (CDA, INFER): a TeacherConfig from a method's `teacher` block.

Teachers are trained by ddbench on the full real train split and cached by recipe (ddbench.training.load_teacher),
so a method and an evaluation protocol with the same teacher block share one trained network.
`models: auto` picks by image size: ResNet-18-mod (resnet18_cifar) for 32 px and larger, ConvNet-BN below;
INFER's ensemble adds MobileNetV2 and VGG-11-BN (and EfficientNet-B0 from timm at 32 px and larger).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ddbench.data import DatasetInfo
from ddbench.training import TeacherConfig
from ddbench.utils import DDBenchError


def auto_models(info: DatasetInfo, ensemble: bool) -> list[str]:
    """The default teacher architectures for `info`'s image size (one for CDA, an ensemble for INFER)."""
    if info.image_size >= 32:
        if not ensemble:
            return ["resnet18_cifar"]
        return ["resnet18_cifar", "mobilenetv2_cifar", "timm:efficientnet_b0", "vgg11_bn"]
    return ["convnet_bn", "mobilenetv2_cifar", "vgg11_bn"] if ensemble else ["convnet_bn"]


def teacher_config(block: dict[str, Any] | None, info: DatasetInfo, ensemble: bool = False) -> TeacherConfig:
    """TeacherConfig from the method's `teacher` options (unknown keys are an error naming the valid ones)."""
    block = dict(block or {})
    known = {f.name for f in fields(TeacherConfig)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise DDBenchError(f"unknown method.teacher option(s) {unknown}; valid options: {sorted(known)}.")
    models = block.get("models", "auto")
    if models in (None, "auto"):
        block["models"] = auto_models(info, ensemble)
    elif isinstance(models, str):
        block["models"] = [models]
    else:
        block["models"] = list(models)
    if not block["models"]:
        raise DDBenchError("method.teacher.models must name at least one model (or be 'auto').")
    block["model_kwargs"] = {k: dict(v) for k, v in (block.get("model_kwargs") or {}).items()}
    return TeacherConfig(**block)
