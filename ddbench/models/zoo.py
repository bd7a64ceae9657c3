"""Evaluation architectures of the dataset-distillation literature, plus any timm model.

Every model maps x [B,C,H,W] → logits [B,num_classes], exposes `embed(x)` → penultimate features [B,D],
and computes `forward(x) = classifier(embed(x))`. The built-in ones also answer `feature_maps(x, embedding=False)`
(see ddbench.models.features): post-activation maps [B,C_l,H_l,W_l], shallow to deep. All of them accept 16/28/32/64-px inputs; sizes of the
flattened features are computed, not hard-coded.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.models.convnet import BN_ONLY, NORMS, make_norm
from ddbench.models.features import Maps, TappedSequential, activation_taps
from ddbench.models.options import Choice, IntList, IntRange, LayerList, hydra_value
from ddbench.models.registry import register_model
from ddbench.utils import DDBenchError


def _flat_size(features: nn.Module, channels: int, image_size: int, arch: str) -> int:
    """Number of features `features` produces for one image, found by a dummy forward."""
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as err:
        raise DDBenchError(f"{arch} does not support {image_size}px images with {channels} channels ({err}).") from err
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise DDBenchError(f"{arch} reduces {image_size}px images to an empty feature map; use larger images.")
    return int(out[0].numel())


def _check_positive(size: int, arch: str, image_size: int) -> None:
    if size < 1:
        raise DDBenchError(f"{arch} is too deep for {image_size}px images; use larger images.")


# --------------------------------------------------------------------------------------------- AlexNet


class AlexNet(TappedSequential):
    """The 5-conv AlexNet of the DC/DSA/DM evaluations (no normalization); feature_maps: the 5 post-ReLU conv maps
    (before pooling)."""

    def __init__(self, channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=4 if channels == 1 else 2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Linear(_flat_size(self.features, channels, image_size, "alexnet"), num_classes)
        self.taps = activation_taps(self.features)


@register_model("alexnet", builds=AlexNet)
def alexnet(channels: int, num_classes: int, image_size: int) -> nn.Module:
    return AlexNet(channels, num_classes, image_size)


# ------------------------------------------------------------------------------------------------- VGG

VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def leading_pools_to_skip(cfg: list[int | str], size: int, smallest: int) -> int:
    """How many of the first pools of `cfg` to leave out so that its last conv sees a map of at least
    smallest x smallest on a size x size input."""
    last_conv = max(i for i, item in enumerate(cfg) if item != "M")
    before = sum(1 for item in cfg[:last_conv] if item == "M")
    skip = 0
    while skip < before and size >> (before - skip) < smallest:
        skip += 1
    return skip


class VGG(TappedSequential):
    """VGG with 3x3 convs → norm → ReLU (feature_maps: one post-ReLU map per conv, before pooling). On inputs smaller than the cfg expects, the first max-pools are left out
    until the last conv's map is at least 2x2 with instance norm (on 1x1 the norm gives every image the same
    features) or 1x1 otherwise, so the later convs run at the map sizes they have at 32 px (16 px: the first pool;
    leaving out the 4th instead put four convs on 2x2 maps, which trained from 100 images but stayed at chance from
    280 at batch 256). A pool that would shrink the map below 1x1 is left out too."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        cfg: list[int | str] | None = None,
        norm: str = "instancenorm",
    ):
        super().__init__()
        cfg = list(cfg or VGG11_CFG)
        size = 32 if (channels == 1 and image_size == 28) else image_size
        layers: list[nn.Module] = []
        in_ch = channels
        first = True
        skipped = leading_pools_to_skip(cfg, size, smallest=2 if norm == "instancenorm" else 1)
        pools = 0
        for item in cfg:
            if item == "M":
                pools += 1
                if pools > skipped and size // 2 >= 1:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            pad = 3 if (first and channels == 1 and image_size == 28) else 1
            width = int(item)
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), make_norm(norm, width, size), nn.ReLU()]
            in_ch = width
            first = False
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size * size, num_classes)
        self.taps = activation_taps(self.features)


@register_model("vgg11", builds=VGG, options={"cfg": LayerList(), "norm": Choice(NORMS)})
def vgg11(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    return VGG(channels, num_classes, image_size, **kwargs)


@register_model("vgg11_bn", builds=VGG, options={"cfg": LayerList(), "norm": BN_ONLY})
def vgg11_bn(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    kwargs["norm"] = "batchnorm"
    return VGG(channels, num_classes, image_size, **kwargs)


# ---------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """3x3 → norm → ReLU → 3x3 → norm, plus shortcut, then ReLU.

    avgpool_down=True is the "AP" variant: downsampling is a stride-1 conv followed by AvgPool2d(2), in both
    the main path (after conv1's activation) and the shortcut (after the 1x1 conv).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, size: int, avgpool_down: bool = False):
        super().__init__()
        self.stride = stride
        self.avgpool_down = avgpool_down
        out_size = size // stride if avgpool_down else (size - 1) // stride + 1
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes, size if avgpool_down else out_size)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes, out_size)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if avgpool_down:
                shortcut = [nn.Conv2d(in_planes, planes, 1, stride=1, bias=False)]
                if stride != 1:
                    shortcut.append(nn.AvgPool2d(stride, stride))
            else:
                shortcut = [nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)]
            self.shortcut = nn.Sequential(*shortcut, make_norm(norm, planes, out_size))
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.avgpool_down and self.stride != 1:
            out = F.avg_pool2d(out, self.stride, self.stride)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, four stages, global average pool, linear head."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        norm: str = "instancenorm",
        avgpool_down: bool = False,
        arch: str = "resnet18",
    ):
        super().__init__()
        size = image_size
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(norm, 64, size)
        in_planes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                block = BasicBlock(in_planes, planes, stride, norm, size, avgpool_down)
                size = block.out_size
                _check_positive(size, arch, image_size)
                stage.append(block)
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # The AP variant is the DC/MTT cross-architecture net: its final "average pooling" has kernel 1 (a
        # no-op), so the classifier reads the whole flattened 512 x h x w map (512*4*4 at 32x32, 512*3*3 at 28x28).
        self.flatten_map = avgpool_down
        self.classifier = nn.Linear(in_planes * (size * size if avgpool_down else 1), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self._pool(self.layer4(self.layer3(self.layer2(self.layer1(out)))))

    def _pool(self, out: torch.Tensor) -> torch.Tensor:
        """The last stage's map [B,512,h,w] → the classifier's input [B,D]."""
        return out.flatten(1) if self.flatten_map else F.adaptive_avg_pool2d(out, 1).flatten(1)

    def feature_maps(self, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
        """The stem's post-ReLU map and each stage's output (5 maps); with embedding=True also embed(x)."""
        maps = [F.relu(self.bn1(self.conv1(x)))]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            maps.append(stage(maps[-1]))
        return (maps, self._pool(maps[-1])) if embedding else maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _resnet_factory(norm: str, avgpool_down: bool, arch: str) -> Callable[..., nn.Module]:
    def build(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
        kwargs.setdefault("norm", norm)  # the _bn variants declare norm as batchnorm only
        return ResNet(channels, num_classes, image_size, avgpool_down=avgpool_down, arch=arch, **kwargs)

    return build


def _register_resnet(name: str, norm: str, avgpool_down: bool) -> Callable[..., nn.Module]:
    options = {"layers": IntList(length=4, note="blocks per stage"),
               "norm": BN_ONLY if norm == "batchnorm" else Choice(NORMS)}
    register = register_model(name, builds=ResNet, options=options, fixed=("avgpool_down", "arch"))
    return register(_resnet_factory(norm, avgpool_down, name))


resnet18 = _register_resnet("resnet18", "instancenorm", False)
resnet18_bn = _register_resnet("resnet18_bn", "batchnorm", False)
resnet18_ap = _register_resnet("resnet18_ap", "instancenorm", True)
resnet18_ap_bn = _register_resnet("resnet18_ap_bn", "batchnorm", True)


def _torchvision_resnet18_cls() -> type:
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import ResNet as TVResNet

    class CifarResNet18(TVResNet):
        """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool; state_dict keys match torchvision."""

        def __init__(self, channels: int, num_classes: int):
            super().__init__(TVBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
            self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()

        @property
        def classifier(self) -> nn.Module:
            return self.fc

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.avgpool(x), 1)

        def feature_maps(self, x: torch.Tensor, embedding: bool = False) -> Maps | tuple[Maps, torch.Tensor]:
            """The stem's post-ReLU map and each stage's output (5 maps); with embedding=True also embed(x)."""
            maps = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                maps.append(stage(maps[-1]))
            return (maps, torch.flatten(self.avgpool(maps[-1]), 1)) if embedding else maps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.embed(x))

    return CifarResNet18


@register_model("resnet18_cifar")
def resnet18_cifar(channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _torchvision_resnet18_cls()(channels, num_classes)


# ----------------------------------------------------------------------------------------------- LeNet


class LeNet(TappedSequential):
    """LeNet-5; feature_maps: the 2 post-ReLU conv maps (before pooling); embed: [B, 84]."""

    def __init__(self, channels: int, num_classes: int, image_size: int):
        super().__init__()
        pad = 2 if (channels == 1 and image_size == 28) else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        flat = _flat_size(self.features, channels, image_size, "lenet")
        self.fc = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.classifier = nn.Linear(84, num_classes)
        self.taps = activation_taps(self.features)

    def neck(self, flat: torch.Tensor) -> torch.Tensor:
        """Its fully connected layers: [B, F] → [B, 84]."""
        return self.fc(flat)


@register_model("lenet", builds=LeNet)
def lenet(channels: int, num_classes: int, image_size: int) -> nn.Module:
    return LeNet(channels, num_classes, image_size)


# ------------------------------------------------------------------------------------------------- MLP


class MLP(TappedSequential):
    """Fully connected ReLU layers on the flattened image; feature_maps: the depth hidden vectors [B, width]."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_dim, num_classes)
        self.taps = activation_taps(self.features)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_model("mlp", builds=MLP, options={"width": IntRange(1), "depth": IntRange(1, note="hidden layers")})
def mlp(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    return MLP(channels, num_classes, image_size, **kwargs)


# ------------------------------------------------------------------------------------------------ timm


class TimmModel(nn.Module):
    """A timm model with `embed` = pre-logit features; `forward` is timm's own forward (= head(embed(x)))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return feats.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


TIMM_LOADS_WEIGHTS = ("pretrained_cfg_overlay", "checkpoint_path")
TIMM_FROM_DATASET = ("num_classes", "in_chans")  # set from the dataset by timm_model


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise DDBenchError("timm models need the `timm` package; pip install timm.") from err
    return timm


def check_timm(name: str, options: dict[str, Any], where: str | None = None) -> None:
    """timm model `name` exists (timm.is_model: no download) and `options` load no weights and leave the dataset's
    settings alone. timm's own options are passed through unchecked: its factories take **kwargs."""
    timm = _timm()
    if not name or not timm.is_model(name):
        stem = name.split(".")[0][:8]
        raise DDBenchError(
            f"unknown timm model {name!r} ({where or 'timm:' + name}); find valid names with `python -c \"import timm; "
            f"print(timm.list_models('*{stem}*'))\"` (timm.list_models accepts wildcards), e.g. timm:resnet10t.")

    def key(option: str) -> str:
        return f"{where}.{option}" if where else f"timm:{name} option {option}"

    if options.get("pretrained"):
        raise DDBenchError(f"{key('pretrained')}={hydra_value(options['pretrained'])} is not supported: timm models "
                           "are always built from scratch here (nothing is downloaded); remove it.")
    for option in TIMM_LOADS_WEIGHTS:
        if option in options:
            raise DDBenchError(f"{key(option)} would load weights, which ddbench never does; remove it.")
    for option in TIMM_FROM_DATASET:
        if option in options:
            raise DDBenchError(f"{key(option)} is set from the dataset; remove it.")


def timm_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build timm model `name` from scratch (never downloads weights). `img_size` is passed where accepted."""
    timm = _timm()
    check_timm(name, kwargs)
    kwargs.pop("pretrained", None)
    base = dict(pretrained=False, num_classes=num_classes, in_chans=channels)
    if "img_size" not in kwargs:
        try:
            model = timm.create_model(name, **base, img_size=image_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise DDBenchError(f"timm could not build {name!r} with options {sorted(kwargs)}: {err}") from err
            model = None
    else:
        model = None
    if model is None:
        try:
            model = timm.create_model(name, **base, **kwargs)
        except TypeError as err:
            raise DDBenchError(f"timm could not build {name!r} with options {sorted(kwargs)}: {err}") from err
    wrapped = TimmModel(model)
    _flat_size(wrapped, channels, image_size, f"timm:{name}")  # fail now, with a clear message, if too small
    return wrapped
