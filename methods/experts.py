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
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ddbench.augment import DSA, DSADraw, DSAParams
from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.training.embedding import data_fingerprint
from ddbench.utils import DDBenchError, make_generator, stable_hash

log = logging.getLogger(__name__)

KIND = "experts"
OPTIMIZERS = ("sgd", "gsam")


# ----------------------------------------------------------------------------------------- flat models


class FlatModel:
    """A template module used as a pure function of one flat parameter vector.

    The vector [P] concatenates the module's parameters in ``parameters()`` order (the reference buffers'
    order). ``forward(theta [P], x [B,C,H,W])`` → logits [B,K]; ``forward_many(thetas [S,P], x [S,B,C,H,W])``
    → [S,B,K]. Persistent buffers (BatchNorm statistics) come from the template and are not part of the
    vector; BatchNorm layers drop their running statistics and always normalise with batch statistics.
    """

    def __init__(self, template: nn.Module):
        self.template = template.train()
        for p in template.parameters():
            p.requires_grad_(False)
        for module in template.modules():  # batch statistics only: no running stats to carry along
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
        named = list(template.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        keys = set(template.state_dict().keys())
        self.buffers = {n: b for n, b in template.named_buffers() if n in keys}

    def flatten(self, module: nn.Module) -> Tensor:
        """The parameters of `module` (same architecture) as one detached vector [P]."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """[..., P] → {name: view [..., *shape]} (views: gradients flow back to theta)."""
        lead = theta.shape[:-1]
        parts = torch.split(theta, self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.template, (self.unflatten(theta), self.buffers), (x,))

    __call__ = forward

    def forward_many(self, thetas: Tensor, x: Tensor, use_vmap: bool) -> Tensor:
        """S parameter vectors [S,P] on S batches [S,B,...] → logits [S,B,K]."""
        if not use_vmap:
            return torch.stack([self.forward(t, xs) for t, xs in zip(thetas, x)])
        return vmap(self.forward, in_dims=(0, 0), randomness="different")(thetas, x)

    @torch.no_grad()
    def predict(self, theta: Tensor, images: Tensor, batch_size: int = 1024) -> Tensor:
        """Logits [N,K] of the network `theta` on `images` [N,...], in chunks."""
        return torch.cat([self.forward(theta, images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def build_template(model_cfg: dict[str, Any], splits: Splits, seed: int = 0) -> nn.Module:
    from ddbench.training.networks import init_model

    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return init_model(model_cfg["name"], splits.info, seed, **kwargs)


# ----------------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class ExpertSpec:
    """How experts are trained (the method config's ``experts`` block).

    optimizer 'sgd' is MTT's plain SGD; 'gsam' is FTD/DATM's GSAM (rho, gsam_alpha, adaptive) around the same
    SGD. seed is the expert set's own seed (independent of the run's seed, so seed sweeps share experts);
    parallel (experts trained at once) and vmap only change speed, not the trajectories' recipe.
    """

    num_experts: int = 100
    epochs: int = 50
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    rho: float = 0.01
    gsam_alpha: float = 0.4
    adaptive: bool = True
    seed: int = 0
    parallel: int = 10
    vmap: bool | str = "auto"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> "ExpertSpec":
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DDBenchError(f"unknown experts option(s) {unknown}; valid options: {sorted(known)}.")
        spec = cls(**cfg)
        if spec.optimizer not in OPTIMIZERS:
            raise DDBenchError(f"experts.optimizer must be one of {OPTIMIZERS}, got {spec.optimizer!r}.")
        if spec.num_experts < 1 or spec.epochs < 1 or spec.batch_size < 1 or spec.parallel < 1:
            raise DDBenchError("experts.num_experts, epochs, batch_size and parallel must all be >= 1.")
        return spec

    def recipe(self) -> dict[str, Any]:
        """What determines a trajectory (the cache key's part from this spec)."""
        keep = ["epochs", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "seed"]
        if self.optimizer == "gsam":
            keep += ["rho", "gsam_alpha", "adaptive"]
        plain = asdict(self)
        return {k: plain[k] for k in keep}


def augment_recipe(augment_cfg: dict[str, Any] | None) -> dict[str, Any] | str:
    cfg = dict(augment_cfg or {})
    if not cfg.get("enabled", True) or str(cfg.get("strategy", "x")).lower() in ("", "none"):
        return "none"
    return {"strategy": cfg.get("strategy", "color_crop_cutout_flip_scale_rotate"),
            "ranges": asdict(DSAParams(**(cfg.get("ranges") or {})))}


def expert_key(
    splits: Splits, model_cfg: dict[str, Any], spec: ExpertSpec, augment_cfg: dict[str, Any] | None, index: int,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": 1,
        "data": fingerprint or data_fingerprint(splits),
        "model": dict(model_cfg),
        "recipe": spec.recipe(),
        "augment": augment_recipe(augment_cfg),
        "index": int(index),
    }


def expert_seed(spec: ExpertSpec, index: int) -> int:
    """The seed of expert `index` (its initial weights and its generator)."""
    return int(stable_hash(["expert", spec.seed, int(index)], 12), 16)


# ----------------------------------------------------------------------------------------- GSAM


def gsam_gradient(
    w: Tensor, grad: Tensor, grad_fn, rho: float, alpha: float, adaptive: bool = True, eps: float = 1e-12
) -> Tensor:
    """The GSAM update direction for rows of w [K,P] (one independent model per row).

    grad = ∇L(w); e = ρ·(w²⊙g)/(‖|w|⊙g‖+eps) (adaptive; else ρ·g/(‖g‖+eps)); g_p = grad_fn(w+e);
    g_⊥ = g − cos(g,g_p)·‖g‖·g_p/(‖g_p‖+eps) with cos = ⟨g,g_p⟩/(‖g‖‖g_p‖+eps); direction = g_p − α·g_⊥.
    Norms and inner products are per row (each model's global norm over all its parameters).
    """
    g = grad
    scaled = w.abs() * g if adaptive else g
    norm = scaled.norm(dim=-1, keepdim=True)
    e = rho * g / (norm + eps)
    if adaptive:
        e = e * w * w
    gp = grad_fn(w + e)
    inner = (g * gp).sum(-1, keepdim=True)
    gp_norm = gp.norm(dim=-1, keepdim=True)
    g_norm = g.norm(dim=-1, keepdim=True)
    cosine = inner / (gp_norm * g_norm + eps)
    vertical = g - cosine * g_norm * gp / (gp_norm + eps)
    return gp - alpha * vertical


# ----------------------------------------------------------------------------------------- training


def _epoch_draws(dsa: DSA, gens: list[torch.Generator], steps: int, batch: int, shape: tuple[int, ...]) -> dict:
    """Every expert's DSA draws for one epoch, laid out [steps, K*batch] so a step's draw is a view."""
    draws = [dsa.sample((steps * batch, *shape), g, groups=steps, per_sample=True) for g in gens]

    def stack(name: str) -> Tensor:
        t = torch.stack([getattr(d, name) for d in draws])  # [K, steps*batch, ...]
        t = t.view(len(draws), steps, batch, *t.shape[2:]).transpose(0, 1)
        return t.contiguous()  # [steps, K, batch, ...]

    names = ("brightness", "saturation", "contrast", "crop", "cutout_center", "flip", "scale", "angle")
    out = {name: stack(name) for name in names}
    out["op"] = torch.stack([d.op for d in draws]).t().contiguous()  # [steps, K]
    out["meta"] = draws[0]
    return out


def _step_draw(epoch: dict, step: int, rows: int) -> DSADraw:
    """The draw of one training step for K experts x `rows` samples each (rows ≤ batch: the last step)."""
    first: DSADraw = epoch["meta"]
    k = epoch["op"].shape[1]

    def take(name: str) -> Tensor:
        t = epoch[name][step, :, :rows]
        return t.reshape(k * rows, *t.shape[2:])

    return DSADraw(
        ops=first.ops, op=epoch["op"][step], groups=k, per_sample=True, batch=k * rows, size=first.size,
        brightness=take("brightness"), saturation=take("saturation"), contrast=take("contrast"), crop=take("crop"),
        cutout_center=take("cutout_center"), cutout_size=first.cutout_size, flip=take("flip"), scale=take("scale"),
        angle=take("angle"),
    )


def train_expert_group(
    splits: Splits,
    model_cfg: dict[str, Any],
    spec: ExpertSpec,
    dsa: DSA | None,
    indices: list[int],
    device: torch.device,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Train the experts `indices` together. Returns trajectories [K, epochs+1, P] and test accuracies [K].

    Each epoch: every expert draws its own permutation of the train split (last partial batch kept) and its
    own DSA draw per step (DSA groups = experts); no host synchronisation inside the epoch.
    """
    seeds = [expert_seed(spec, i) for i in indices]
    templates = [build_template(model_cfg, splits, s) for s in seeds]
    flat = FlatModel(templates[0].to(device))
    w = torch.stack([flat.flatten(t) for t in templates]).to(device)  # [K, P]
    gens = [make_generator(s, device) for s in seeds]
    use_vmap = device.type == "cuda" if spec.vmap == "auto" else bool(spec.vmap)
    k, p = w.shape
    train = splits.train
    n = len(train)
    steps = math.ceil(n / spec.batch_size)
    traj = torch.empty(k, spec.epochs + 1, p, device=device)
    traj[:, 0] = w
    buf = torch.zeros_like(w) if spec.momentum else None
    shape = tuple(train.images.shape[1:])

    def loss_of(weights: Tensor, x: Tensor, y: Tensor) -> Tensor:
        logits = flat.forward_many(weights, x, use_vmap)  # [K,B,C]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / x.shape[1]

    def grad_at(weights: Tensor, x: Tensor, y: Tensor) -> Tensor:
        weights = weights.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_of(weights, x, y), weights)
        return g

    bar = tqdm(range(spec.epochs), desc=f"experts {indices[0]}-{indices[-1]}", disable=not progress, leave=False)
    for epoch in bar:
        order = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])  # [K, n]
        draws = _epoch_draws(dsa, gens, steps, spec.batch_size, shape) if dsa is not None else None
        for step in range(steps):
            rows = order[:, step * spec.batch_size : (step + 1) * spec.batch_size]  # [K, b]
            x = train.images[rows]
            y = train.labels[rows]
            if draws is not None:
                x = dsa.apply(x.flatten(0, 1), _step_draw(draws, step, rows.shape[1])).view_as(x)
            g = grad_at(w, x, y)
            if spec.optimizer == "gsam":
                g = gsam_gradient(w, g, lambda v: grad_at(v, x, y), spec.rho, spec.gsam_alpha, spec.adaptive)
            if spec.weight_decay:
                g = g + spec.weight_decay * w
            if buf is not None:
                buf = spec.momentum * buf + g
                g = buf
            w = w - spec.lr * g
        traj[:, epoch + 1] = w
    accuracy = torch.stack([(flat.predict(w[i], splits.test.images).argmax(-1) == splits.test.labels).float().mean()
                            for i in range(k)])
    return traj, accuracy


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
    keys = {i: expert_key(splits, model_cfg, spec, augment_cfg, i, fingerprint) for i in indices}
    missing = [i for i in indices if not cache.path(KIND, keys[i]).is_file()]
    found = len(indices) - len(missing)
    if found:
        log.info("reusing cached experts: %d of %d found under %s", found, len(indices), cache.root / KIND)
    trained: dict[int, Tensor] = {}
    if missing:
        log.info("training %d expert(s) (%s, %d epochs, %d at a time; cache %s)", len(missing), spec.optimizer,
                 spec.epochs, min(spec.parallel, len(missing)), cache.root / KIND)
        dsa = make_dsa(augment_cfg)
        for start in range(0, len(missing), spec.parallel):
            group = missing[start : start + spec.parallel]
            began = time.perf_counter()
            traj, accuracy = train_expert_group(splits, model_cfg, spec, dsa, group, device, progress)
            traj, accuracy = traj.cpu(), accuracy.cpu()
            for j, i in enumerate(group):
                cache.save(KIND, keys[i], {"trajectory": traj[j].contiguous(), "test_accuracy": accuracy[j]})
                trained[i] = traj[j]
            log.info("experts %s trained in %.1f s; test accuracy %s", group, time.perf_counter() - began,
                     ", ".join(f"{100 * float(a):.1f}%" for a in accuracy))
    out = [trained[i] if i in trained else _read(cache, keys[i], i) for i in indices]
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise DDBenchError(f"cached experts have different shapes {sorted(shapes)}; clear {cache.root / KIND}.")
    return torch.stack(out)


def _read(cache: Cache, key: dict[str, Any], index: int) -> Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = cache.path(KIND, key)
    try:
        return load_file(str(path))["trajectory"]
    except (OSError, SafetensorError, KeyError) as err:
        raise DDBenchError(
            f"cannot read cached expert {index} at {path} ({err}); delete the file and run again."
        ) from err


def make_dsa(augment_cfg: dict[str, Any] | None) -> DSA | None:
    """The DSA experts are trained with (None when the augment config disables it)."""
    recipe = augment_recipe(augment_cfg)
    if recipe == "none":
        return None
    assert isinstance(recipe, dict)
    return DSA(recipe["strategy"], DSAParams(**recipe["ranges"]))
