"""The BatchNorm teachers of the recover methods (CDA, INFER): the method's `teacher` block.

TeacherOptions extends the shared TeacherConfig (so every recipe field is declared once, in TrainRecipe) with the
kuangliu CIFAR recipe as defaults and `models: auto`. Teachers are trained by ddbench on the full real train split
and cached by recipe (ddbench.training.load_teacher), so a method and an evaluation protocol with the same teacher
block share one trained network. `auto` picks by image size: ResNet-18-mod (resnet18_cifar) for 32 px and larger,
ConvNet-BN below; INFER's ensemble adds MobileNetV2 and VGG-11-BN (and at 32 px and up the CIFAR EfficientNet-B0,
efficientnet_b0_cifar: stride-1 stem, 2x2 last map at 32 px, as the reference's; timm's efficientnet_b0 ends on 1x1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ddbench.data import DatasetInfo
from ddbench.methods.options import reject_unknown
from ddbench.training import TeacherConfig
from ddbench.utils import DDBenchError


def auto_models(info: DatasetInfo, ensemble: bool) -> list[str]:
    """The default teacher architectures for `info`'s image size (one for CDA, an ensemble for INFER)."""
    if info.image_size >= 32:
        if not ensemble:
            return ["resnet18_cifar"]
        return ["resnet18_cifar", "mobilenetv2_cifar", "efficientnet_b0_cifar", "vgg11_bn"]
    return ["convnet_bn", "mobilenetv2_cifar", "vgg11_bn"] if ensemble else ["convnet_bn"]


@dataclass
class TeacherOptions(TeacherConfig):
    """A recover method's `teacher` block: TeacherConfig with the CIFAR teacher recipe (SGD 0.1, momentum 0.9,
    wd 5e-4, cosine, 200 epochs, batch 128, crop + flip) and `models`: a list, one name, or 'auto'."""

    models: Any = "auto"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1

    @classmethod
    def valid_options(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, cfg: "dict[str, Any] | TeacherOptions | None") -> "TeacherOptions":
        if isinstance(cfg, TeacherOptions):
            return cfg
        cfg = dict(cfg or {})
        reject_unknown(cfg, cls.valid_options(), "method.teacher")
        models = cfg.get("models", "auto")
        if models is None:
            models = "auto"
        cfg["models"] = models if isinstance(models, str) else list(models)
        if not cfg["models"]:
            raise DDBenchError("method.teacher.models must name at least one model (or be 'auto').")
        cfg["model_kwargs"] = {k: dict(v) for k, v in (cfg.get("model_kwargs") or {}).items()}
        cfg["dsa_ranges"] = dict(cfg.get("dsa_ranges") or {})
        block = cls(**cfg)
        block.check_recipe("method.teacher")
        return block

    def resolve(self, info: DatasetInfo, ensemble: bool = False) -> TeacherConfig:
        """The concrete TeacherConfig for `info` ('auto' and a single name become a list of models)."""
        values = asdict(self)
        if self.models == "auto":
            values["models"] = auto_models(info, ensemble)
        elif isinstance(self.models, str):
            values["models"] = [self.models]
        return TeacherConfig(**values)


def teacher_config(block: "dict[str, Any] | TeacherOptions | None", info: DatasetInfo,
                   ensemble: bool = False) -> TeacherConfig:
    """TeacherConfig from a method's `teacher` block (unknown keys are an error naming the valid ones)."""
    return TeacherOptions.from_dict(block).resolve(info, ensemble)
