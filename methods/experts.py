"""Expert trajectories for trajectory matching (MTT, FTD, DATM): training, GSAM, and the cache.

An expert is a network trained on the real train split from a seeded initialisation; its trajectory is the
flat parameter vector (``parameters()`` order) at init and after every epoch: one fp32 tensor [epochs+1, P].
Each expert is cached on its own (cache kind ``experts``) under a key naming everything that produced it, so
MTT/FTD/DATM runs with the same expert recipe share them, a sweep trains each once, and an interrupted job
only trains the experts that are missing when it is run again.

Several experts train at once on the device: their parameters are the rows of one [K, P] tensor, the network
runs over them with torch.func.vmap on GPUs (a loop on CPUs), and every expert keeps its own generator, hence
its own data order and DSA draws: an expert's trajectory depends on its index, not on which experts shared
its batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ddbench.augment import DSAParams
from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.methods.options import reject_unknown
from ddbench.training import (FlatModel, FlatNetworks, TrainRecipe, data_fingerprint, init_model, layout_digest,
                              train)
from ddbench.utils import DDBenchError, make_generator, stable_hash

log = logging.getLogger(__name__)

KIND = "experts"
OPTIMIZERS = ("sgd", "gsam")


# ----------------------------------------------------------------------------------------- the recipe

# Recipe fields an expert spec does not take: augmentation comes from the run's augment config (DSA), and
# experts train on hard labels without mixing.
NOT_EXPERT_OPTIONS = ("augment", "dsa_strategy", "dsa_ranges", "crop_padding", "flip", "mixup", "cutmix",
                      "mix_prob", "mix_space", "temperature", "t2_scaling")


@dataclass
class ExpertSpec(TrainRecipe):
    """How experts are trained (the method config's ``experts`` block): a TrainRecipe plus the expert set.

    optimizer 'sgd' is MTT's plain SGD; 'gsam' is FTD/DATM's GSAM (rho, gsam_alpha, adaptive) around the same
    SGD. seed is the expert set's own seed (independent of the run's seed, so seed sweeps share experts);
    parallel (experts trained at once) and vmap only change speed, not the trajectories' recipe.
    """

    epochs: int = 50
    schedule: str = "constant"
    momentum: float = 0.0
    weight_decay: float = 0.0
    num_experts: int = 100
    seed: int = 0
    parallel: int = 10
    vmap: bool | str = "auto"

    @classmethod
    def valid_options(cls) -> list[str]:
        return sorted(f.name for f in fields(cls) if f.name not in NOT_EXPERT_OPTIONS)

    @classmethod
    def from_dict(cls, cfg: "dict[str, Any] | ExpertSpec | None") -> "ExpertSpec":
        if isinstance(cfg, ExpertSpec):
            return cfg
        cfg = dict(cfg or {})
        reject_unknown(cfg, cls.valid_options(), "experts")
        spec = cls(**cfg)
        spec.check_recipe("experts")
        if spec.optimizer not in OPTIMIZERS:
            raise DDBenchError(f"experts.optimizer must be one of {OPTIMIZERS}, got {spec.optimizer!r}.")
        if spec.num_experts < 1 or spec.parallel < 1:
            raise DDBenchError("experts.num_experts and experts.parallel must be >= 1.")
        return spec

    def recipe(self) -> dict[str, Any]:
        """What determines a trajectory (the cache key's part from this spec)."""
        keep = ["epochs", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "seed"]
        if self.optimizer == "gsam":
            keep += ["rho", "gsam_alpha", "adaptive"]
        if self.schedule != "constant":
            keep += ["schedule", "lr_decay_at", "lr_decay_factor"]
        if self.warmup_epochs:
            keep += ["warmup_epochs"]
        plain = asdict(self)
        return {k: plain[k] for k in keep}

    def train_recipe(self, augment_cfg: dict[str, Any] | None) -> TrainRecipe:
        """The trainer's recipe: this spec with the DSA of the run's augment config (or none)."""
        aug = augment_recipe(augment_cfg)
        if aug == "none":
            return TrainRecipe.of(self, augment="none")
        assert isinstance(aug, dict)
        return TrainRecipe.of(self, augment="dsa", dsa_strategy=aug["strategy"], dsa_ranges=aug["ranges"])


def build_template(model_cfg: dict[str, Any], splits: Splits, seed: int = 0) -> nn.Module:
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return init_model(model_cfg["name"], splits.info, seed, **kwargs)



def augment_recipe(augment_cfg: dict[str, Any] | None) -> dict[str, Any] | str:
    cfg = dict(augment_cfg or {})
    if not cfg.get("enabled", True) or str(cfg.get("strategy", "x")).lower() in ("", "none"):
        return "none"
    return {"strategy": cfg.get("strategy", "color_crop_cutout_flip_scale_rotate"),
            "ranges": asdict(DSAParams(**(cfg.get("ranges") or {})))}


def expert_key(
    splits: Splits, model_cfg: dict[str, Any], spec: ExpertSpec, augment_cfg: dict[str, Any] | None, index: int,
    fingerprint: dict[str, Any] | None = None, layout: str | None = None,
) -> dict[str, Any]:
    return {
        "format": 1,
        "data": fingerprint or data_fingerprint(splits),
        "model": dict(model_cfg),
        "layout": layout or layout_digest(model_cfg, splits.info),
        "recipe": spec.recipe(),
        "augment": augment_recipe(augment_cfg),
        "index": int(index),
    }


def expert_seed(spec: ExpertSpec, index: int) -> int:
    """The seed of expert `index` (its initial weights and its generator)."""
    return int(stable_hash(["expert", spec.seed, int(index)], 12), 16)


# ----------------------------------------------------------------------------------------- training


def train_expert_group(
    splits: Splits,
    model_cfg: dict[str, Any],
    spec: ExpertSpec,
    augment_cfg: dict[str, Any] | None,
    indices: list[int],
    device: torch.device,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Train the experts `indices` together. Returns trajectories [K, epochs+1, P] and test accuracies [K].

    The experts are the rows of one FlatNetworks trained by the one trainer, each with its own generator
    (its own data order and DSA draws every epoch).
    """
    seeds = [expert_seed(spec, i) for i in indices]
    templates = [build_template(model_cfg, splits, s) for s in seeds]
    flat = FlatModel(templates[0].to(device))
    thetas = torch.stack([flat.flatten(t) for t in templates]).to(device)  # [K, P]
    use_vmap = device.type == "cuda" if spec.vmap == "auto" else bool(spec.vmap)
    nets = FlatNetworks(flat, thetas, use_vmap, name=f"experts {indices[0]}-{indices[-1]}", record=True)
    gens = [make_generator(s, device) for s in seeds]
    train(nets, splits.train.images, splits.train.labels, spec.train_recipe(augment_cfg), gens, progress=progress)
    final = nets.thetas.detach()
    accuracy = torch.stack([(flat.predict(final[i], splits.test.images).argmax(-1) == splits.test.labels).float().mean()
                            for i in range(len(indices))])
    return nets.trajectory, accuracy


# ----------------------------------------------------------------------------------------- the cache


def load_or_train_experts(
    splits: Splits,
    model_cfg: dict[str, Any],
    spec: ExpertSpec,
    augment_cfg: dict[str, Any] | None,
    device: torch.device,
    cache: Cache,
    indices: list[int] | None = None,
    progress: bool = False,
) -> Tensor:
    """Trajectories [X, epochs+1, P] (CPU, fp32) of the experts `indices` (default 0..num_experts-1).

    Cached experts are loaded; missing ones are trained `spec.parallel` at a time and each is cached as soon as
    its group finishes, so an interrupted job resumes with the experts still missing.
    """
    indices = list(range(spec.num_experts)) if indices is None else [int(i) for i in indices]
    fingerprint = data_fingerprint(splits)
    layout = layout_digest(model_cfg, splits.info)
    keys = {i: expert_key(splits, model_cfg, spec, augment_cfg, i, fingerprint, layout) for i in indices}
    cached = {i: cache.load(KIND, keys[i], required=("trajectory",)) for i in indices}  # corrupted ones: None
    trained: dict[int, Tensor] = {}
    missing = [i for i in indices if cached[i] is None]
    if missing:
        # one lock per expert set: a concurrent job training the same experts finishes first, then these load
        with cache.building(KIND, {**keys[indices[0]], "index": "set"}):
            for i in missing:
                cached[i] = cache.load(KIND, keys[i], required=("trajectory",))
            trained = _train_missing(splits, model_cfg, spec, augment_cfg, device, cache, keys,
                                     [i for i in missing if cached[i] is None], progress)
    found = len(indices) - len(trained)
    if found:
        log.info("reusing cached experts: %d of %d found under %s", found, len(indices), cache.root / KIND)
    out = [trained[i] if i in trained else cached[i]["trajectory"] for i in indices]  # type: ignore[index]
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise DDBenchError(f"cached experts have different shapes {sorted(shapes)}; clear {cache.root / KIND}.")
    return torch.stack(out)


def _train_missing(splits: Splits, model_cfg: dict[str, Any], spec: ExpertSpec, augment_cfg: dict[str, Any] | None,
                   device: torch.device, cache: Cache, keys: dict[int, dict[str, Any]], missing: list[int],
                   progress: bool) -> dict[int, Tensor]:
    """Train the experts `missing`, `spec.parallel` at a time, caching each group as it ends; their trajectories
    by index."""
    trained: dict[int, Tensor] = {}
    if missing:
        log.info("training %d expert(s) (%s, %d epochs, %d at a time; cache %s)", len(missing), spec.optimizer,
                 spec.epochs, min(spec.parallel, len(missing)), cache.root / KIND)
        for start in range(0, len(missing), spec.parallel):
            group = missing[start : start + spec.parallel]
            began = time.perf_counter()
            traj, accuracy = train_expert_group(splits, model_cfg, spec, augment_cfg, group, device, progress)
            traj, accuracy = traj.cpu(), accuracy.cpu()
            for j, i in enumerate(group):
                cache.save(KIND, keys[i], {"trajectory": traj[j].contiguous(), "test_accuracy": accuracy[j]})
                trained[i] = traj[j]
            log.info("experts %s trained in %.1f s; test accuracy %s", group, time.perf_counter() - began,
                     ", ".join(f"{100 * float(a):.1f}%" for a in accuracy))
    return trained
