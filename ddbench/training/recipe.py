"""Training recipes: the one declaration of how networks are trained, and the teacher built on it.

TrainRecipe is declared once here. Configs that carry a recipe (the teacher here, eval protocols, expert specs)
extend it as dataclass subclasses, so the YAML keys stay flat (`eval.lr`, `eval.teacher.epochs`,
`method.experts.lr`) while each field is declared in one place; a subclass redeclares a field only to change
its default. `TrainRecipe.of(config)` extracts the plain recipe the trainer runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from ddbench.utils import DDBenchError

AUGMENTS = ("dsa", "crop_flip", "none")
OPTIMIZERS = ("sgd", "adamw", "gsam")
SCHEDULES = ("step", "cosine", "constant")
MIX_SPACES = ("logits", "probs")
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
AUTO = "auto"  # crop_padding / flip: follow the dataset (see TrainRecipe.for_data)
WARMUP_START = 0.01  # lr factor at the first warm-up step (the torchvision reference recipe's lr_warmup_decay)
# Fields added after products were cached, with the default that keeps the old behaviour: a recipe's dict (what
# cache keys hold) leaves them out at that default, so cached teachers, experts and evaluation runs stay valid.
KEY_NEUTRAL: dict[str, Any] = {"warmup_epochs": 0}
R = TypeVar("R", bound="TrainRecipe")


def without_neutral(values: Any) -> Any:
    """`values` (a recipe's or an options' asdict, nested dicts and lists included) without the KEY_NEUTRAL
    fields that hold their neutral default."""
    if isinstance(values, dict):
        return {k: without_neutral(v) for k, v in values.items()
                if not (k in KEY_NEUTRAL and type(v) is type(KEY_NEUTRAL[k]) and v == KEY_NEUTRAL[k])}
    if isinstance(values, list):
        return [without_neutral(v) for v in values]
    return values


def crop_padding_for(image_size: int) -> int:
    """The crop padding that fits an image size: 1/8 of the side, rounded half up, at least 1 (the references'
    4 px at 32 px; 2 px at 16 px, 4 px at 28 px, 8 px at 64 px)."""
    return max(1, int(image_size / 8 + 0.5))


def data_flip(info: Any) -> bool:
    """Whether crop-and-flip augmentation may mirror images of dataset `info` (DatasetInfo.mirror_safe)."""
    return bool(getattr(info, "mirror_safe", True))


@dataclass
class TrainRecipe:
    """How the trainer (ddbench.training.train) trains networks on one set.

    optimizer: sgd (momentum, weight decay), adamw, or gsam (GSAM's direction, then the same SGD step).
    schedule: cosine (per step, to 0 after the last step) | step (lr × lr_decay_factor from epoch
    int(epochs · lr_decay_at), with SGD's momentum reset there) | constant.
    warmup_epochs: a linear warm-up of the lr over the first warmup_epochs epochs (from WARMUP_START·lr, per
    step), then the schedule over the remaining steps (0 = none: the schedule from the first step).
    augment: dsa (dsa_strategy, dsa_ranges) | crop_flip (RandomCrop(pad crop_padding) + flip) | none.
    crop_padding / flip of crop_flip: 'auto' (the default) follows the data: padding = crop_padding_for(size),
    flip only where the dataset is mirror-safe. `for_data(info)` resolves them; the trainer refuses 'auto'.
    DSA keeps the reference code's own ranges and flip (its ops are the protocol's, as the papers ran them).
    mixup / cutmix: Beta parameters (0 = off); mixed images get mixed targets (mix_space for stored logits).
    temperature / t2_scaling: the soft loss KL(softmax(t/T) || softmax(s/T)) (× T²); hard labels use CE.
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.01
    optimizer: str = "sgd"
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_at: float = 0.5
    lr_decay_factor: float = 0.1
    warmup_epochs: int = 0
    augment: str = "crop_flip"
    dsa_strategy: str = DSA_STRATEGY
    dsa_ranges: dict[str, float] = field(default_factory=dict)
    crop_padding: int | str = AUTO
    flip: bool | str = AUTO
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_space: str = "logits"
    temperature: float = 1.0
    t2_scaling: bool = False
    rho: float = 0.01  # gsam only
    gsam_alpha: float = 0.4  # gsam only
    adaptive: bool = True  # gsam only

    @classmethod
    def of(cls, config: Any, **changes: Any) -> "TrainRecipe":
        """The recipe part of `config` (any object with the recipe's field names), with `changes` applied."""
        values = {f.name: getattr(config, f.name) for f in fields(cls)}
        values.update(changes)
        values["dsa_ranges"] = dict(values["dsa_ranges"] or {})
        return cls(**values)

    def for_data(self: R, info: Any) -> R:
        """This recipe with crop_padding/flip 'auto' resolved for dataset `info` (a DatasetInfo): what is trained
        and what cache keys hold. Explicit values are kept."""
        changes: dict[str, Any] = {}
        if self.crop_padding == AUTO:
            changes["crop_padding"] = crop_padding_for(int(info.image_size))
        if self.flip == AUTO:
            changes["flip"] = data_flip(info)
        return replace(self, **changes) if changes else self

    @property
    def resolved(self) -> bool:
        return self.crop_padding != AUTO and self.flip != AUTO

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def check_recipe(self, where: str) -> None:
        """One DDBenchError naming the first bad field as `where`.field."""
        for name, value, valid in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                   ("augment", self.augment, AUGMENTS), ("mix_space", self.mix_space, MIX_SPACES)):
            if value not in valid:
                raise DDBenchError(f"{where}.{name} must be one of {', '.join(map(repr, valid))}, got {value!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise DDBenchError(f"{where}.epochs and {where}.batch_size must be >= 1.")
        if not self.lr > 0:
            raise DDBenchError(f"{where}.lr must be > 0, got {self.lr}.")
        if not (type(self.warmup_epochs) is int and 0 <= self.warmup_epochs < self.epochs):
            raise DDBenchError(f"{where}.warmup_epochs must be an int in [0, {where}.epochs = {self.epochs}), "
                               f"got {self.warmup_epochs!r}.")
        if not self.temperature > 0:
            raise DDBenchError(f"{where}.temperature must be > 0, got {self.temperature}.")
        if not (self.crop_padding == AUTO or (type(self.crop_padding) is int and self.crop_padding >= 0)):
            raise DDBenchError(f"{where}.crop_padding must be 'auto' or an int >= 0, got {self.crop_padding!r}.")
        if not (self.flip == AUTO or isinstance(self.flip, bool)):
            raise DDBenchError(f"{where}.flip must be 'auto', true or false, got {self.flip!r}.")
        if self.mixup < 0 or self.cutmix < 0 or not 0 <= self.mix_prob <= 1:
            raise DDBenchError(f"{where}.mixup and {where}.cutmix must be >= 0 (0 = off) and {where}.mix_prob in [0, 1].")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what cache keys hold), KEY_NEUTRAL fields at their default left out."""
        return without_neutral(asdict(self))


@dataclass
class TeacherConfig(TrainRecipe):
    """The teacher (or ensemble: one member per entry of `models`) ddbench trains itself on the full real train set.

    Member i is trained with this recipe from the initialisation seed derived from ("teacher", name, seed + i),
    never equal to an evaluation network's seed; each member is cached (Cache kind "teachers") under the data
    fingerprint, its model and this recipe.
    """

    models: list[str] = field(default_factory=lambda: ["convnet"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def recipe(self) -> TrainRecipe:
        return TrainRecipe.of(self)
