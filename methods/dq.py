"""DQ: dataset quantization (Zhou et al., ICCV 2023), with the offline substitutes of the spec (§4.6).

1. Features: a network trained by ddbench on the real train set (the cached teacher) gives, per sample, the
   gradient embedding g = [δ, vec(δ eᵀ)] of its last layer, e = embed(x). δ is the gradient of the loss with
   respect to the logits z: gradient=plain, cross-entropy on z (δ = softmax(z) − onehot(y)); gradient=reference,
   DeepCore's cross-entropy applied to the softmax outputs p = softmax(z) (δ = J_softmax(z)ᵀ (softmax(p) −
   onehot(y))). Both sum to 0 over the classes, so the true-class component is computed as minus the sum of the
   others (1 − p_y would round to 0 in float32 at a large logit margin). g is never built:
   ⟨g_a, g_b⟩ = (δ_a·δ_b)(1 + e_a·e_b).
   Similarity s = 0.5 + 0.5·cos(g_a, g_b), per class (features=embedding: the cosine of e instead).
2. Bins: per class, N non-overlapping bins by greedy GraphCut, recursively on the remaining pool U: add
   argmax_k λ·Σ_{i∈U} s(i,k) − 2·Σ_{j∈S} s(j,k) until the bin holds round(|class|/N); the last bin is the rest.
   All classes at once; the gain of every candidate from a running vector (one O(n) update per pick).
3. Sampling: every class takes `ipc` images uniformly from its bins, split over the bins by largest remainder.
4. Pixels (optional): Grad-CAM of the same network for the true class scores the patches of each image; the
   lowest mask_ratio of them are dropped and decoded from the kept ones (ddbench.artifact.patches) instead of by
   the reference's MAE: by default the posterior mean under a probabilistic PCA of the train set (fill=ppca, a
   learned decoder stored with the artifact), or a blur/mean fill. The artifact stores the decoded images and the
   keep mask; stored_bytes counts the kept patches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ddbench.artifact.patches import FILLS, decode_rule, fill_dropped, fit_pixel_prior, kept_bytes, pixel_mask
from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.options import MethodOptions, option
from ddbench.training import TeacherConfig, load_teacher
from ddbench.utils import DDBenchError

MASK_NAME = "dq_patch_mask"


GRADIENTS = ("plain", "reference")


def logit_gradient(z: torch.Tensor, y: torch.Tensor, kind: str = "plain") -> torch.Tensor:
    """δ [n, C]: the gradient of the per-sample loss with respect to the logits z [n, C] for labels y [n]
    (kind plain: CE(z, y); reference: CE(softmax(z), y), DeepCore's), true class = minus the sum of the others."""
    p = z.float().softmax(1)
    if kind == "reference":
        g = p.softmax(1) - F.one_hot(y, z.shape[1]).to(p.dtype)
        delta = p * g - p * (p * g).sum(1, keepdim=True)
    else:
        delta = p
    others = delta.scatter(1, y.view(-1, 1), 0.0)
    return others.scatter(1, y.view(-1, 1), -others.sum(1, keepdim=True))


def gradient_similarity(delta: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """delta [..., n, C], emb [..., n, D] → s = 0.5 + 0.5·cos(g_a, g_b) [..., n, n] of g = [δ, vec(δ eᵀ)]."""
    inner = (delta @ delta.transpose(-1, -2)) * (1 + emb @ emb.transpose(-1, -2))
    norm = (delta.pow(2).sum(-1) * (1 + emb.pow(2).sum(-1))).sqrt().clamp_min(1e-12)
    return 0.5 + 0.5 * inner / (norm.unsqueeze(-1) * norm.unsqueeze(-2))


def embedding_similarity(emb: torch.Tensor) -> torch.Tensor:
    """emb [..., n, D] → s = 0.5 + 0.5·cos(e_a, e_b) [..., n, n] (the penultimate-feature alternative)."""
    unit = F.normalize(emb, dim=-1)
    return 0.5 + 0.5 * unit @ unit.transpose(-1, -2)


def graphcut_bins(sim: torch.Tensor, valid: torch.Tensor, bin_size: torch.Tensor, num_bins: int,
                  lam: float = 1.0) -> torch.Tensor:
    """Recursive greedy GraphCut bins, all classes at once.

    sim [K, n, n] per-class similarities (padded), valid [K, n] real rows, bin_size picks per class and bin:
    [K, num_bins - 1] (`bin_sizes`), or [K] for the same size at every bin.
    Returns bins [K, n]: the bin of every row (0..num_bins-1; the last bin = the remainder), -1 on padding.
    """
    k_classes, n = valid.shape
    if num_bins <= 1:  # one bin: every row
        return torch.where(valid, 0, -1)
    sizes = bin_size.view(k_classes, -1).expand(k_classes, num_bins - 1)
    bins = torch.where(valid, -1, -2)  # -1: in the pool, -2: padding
    steps = int(sizes.max())
    for b in range(num_bins - 1):
        pool = bins == -1
        column = (sim * pool.unsqueeze(-1).to(sim.dtype)).sum(1)  # Σ_{i∈U} s(i,k) [K, n]
        running = torch.zeros_like(column)  # Σ_{j∈S} s(j,k)
        budget = torch.minimum(sizes[:, b], pool.sum(1))
        for t in range(steps):
            free = bins == -1
            gain = (lam * column - 2 * running).masked_fill(~free, float("-inf"))
            pick = gain.argmax(1)  # [K]
            active = t < budget
            chosen = F.one_hot(pick, n).bool() & active.unsqueeze(1)
            bins = torch.where(chosen, b, bins)
            running = running + sim.gather(1, pick.view(-1, 1, 1).expand(-1, 1, n)).squeeze(1) * active.unsqueeze(1)
    bins = torch.where(bins == -1, num_bins - 1, bins)
    return torch.where(bins == -2, -1, bins)


def bin_sizes(counts: Sequence[int], num_bins: int) -> list[list[int]]:
    """Picks per class and bin [K][num_bins - 1], as DQ's quantize loop sizes them: every bin takes
    round(N / num_bins) images of the N train images (coreset_size = round(N · fraction)), split among the classes
    in proportion to what each has left: class c gets round(size / left · left_c) (DeepCore's per-class budget,
    Python rounding). Equal classes get equal, constant sizes; ddbench gives every class at least 1 per bin."""
    left = [int(c) for c in counts]
    size = round(sum(left) * (1.0 / num_bins))
    out: list[list[int]] = [[] for _ in left]
    for _ in range(num_bins - 1):
        fraction = size / max(1, sum(left))
        for c, n in enumerate(left):
            pick = min(n, max(1, round(fraction * n)))
            out[c].append(pick)
            left[c] = n - pick
    return out


def bin_quotas(counts: torch.Tensor, per_class: int) -> torch.Tensor:
    """counts [K, N] rows per bin → picks per bin [K, N] summing to per_class, by largest remainder (ties: lower bin)."""
    share = counts.double() * per_class / counts.sum(1, keepdim=True).double()
    quota = share.floor().long()
    left = per_class - quota.sum(1, keepdim=True)
    fraction = share - quota
    order = torch.argsort(-fraction, dim=1, stable=True)
    extra = (torch.arange(counts.shape[1], device=counts.device) < left).long()
    quota = quota.scatter_add(1, order, extra)
    return torch.minimum(quota, counts)


def sample_from_bins(bins: torch.Tensor, num_bins: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform picks within bins: bins [K, n] (−1 = padding) → positions [K, per_class] (bin-major per class)."""
    k_classes, n = bins.shape
    counts = F.one_hot(bins.clamp_min(0), num_bins).mul((bins >= 0).unsqueeze(-1)).sum(1)  # [K, N]
    quota = bin_quotas(counts, per_class)
    keys = torch.rand(k_classes, n, device=bins.device, generator=generator)
    keys = torch.where(bins >= 0, bins.double() + keys.double(), float(num_bins + 1))
    order = keys.argsort(1)
    sorted_bins = bins.gather(1, order).clamp_min(0)
    start = counts.cumsum(1) - counts
    rank = torch.arange(n, device=bins.device) - start.gather(1, sorted_bins)
    take = (rank < quota.gather(1, sorted_bins)) & (bins.gather(1, order) >= 0)
    return order[take].view(k_classes, per_class)


def grad_cam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Grad-CAM [B, h, w] of the class scores y [B] on feature map `layer` of model.feature_maps (one backward)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        maps, emb = model.feature_maps(x, embedding=True)
        activation = maps[layer]
        if activation.dim() != 4:
            raise DDBenchError(f"Grad-CAM needs a spatial feature map; map {layer} has shape {list(activation.shape)}.")
        score = model.classifier(emb).gather(1, y.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, activation)
    return F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1)).detach()


def keep_mask(cam: torch.Tensor, grid: tuple[int, int], mask_ratio: float) -> torch.Tensor:
    """cam [B, h, w] → uint8 keep mask [B, gh, gw] keeping the int(gh·gw·(1 − mask_ratio)) highest-CAM patches
    (the reference's len_keep, rounded down; at least 1)."""
    scores = F.interpolate(cam.unsqueeze(1), size=grid, mode="bilinear", align_corners=False).flatten(1)
    n_keep = max(1, int(scores.shape[1] * (1 - mask_ratio)))
    top = scores.topk(n_keep, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.uint8).scatter_(1, top, 1).view(-1, *grid)


def default_patch(size: int) -> int:
    """Patch side giving a grid closest to DQ's 14x14 (at least 2 px, dividing the image)."""
    sides = [p for p in range(2, size + 1) if size % p == 0] or [1]
    return min(sides, key=lambda p: (abs(size // p - 14), -p))


@dataclass
class DQOptions(MethodOptions):
    """conf/method/dq.yaml. `embedding`: TeacherConfig fields of the feature/CAM network (models default to the
    run's model); the pixel stage drops `mask_ratio` of the `patch`-px patches (0 or pixel=false: whole images)."""

    num_bins: int = option(10, low=1)
    lam: float = option(1.0, positive=True)
    features: str = option("gradient", choices=("gradient", "embedding"))
    gradient: str = option("plain", choices=GRADIENTS)  # plain CE on the logits | reference: CE on the softmax
    embedding: dict = option(factory=lambda: {"epochs": 40, "lr": 0.01, "batch_size": 256, "seed": 0})
    pixel: bool = True
    mask_ratio: float = option(0.2, low=0)
    patch: int | None = option(None, low=1)
    fill: str = option("ppca", choices=FILLS)
    fill_rank: int = option(64, low=1)  # components of the ppca decoder
    cam_layer: int = -1

    def check(self, method: str) -> None:
        if self.mask_ratio >= 1:
            raise DDBenchError(f"{method}: method.mask_ratio must be < 1 (the fraction of patches dropped), "
                               f"got {self.mask_ratio}.")
        valid = {f.name for f in fields(TeacherConfig)}
        unknown = sorted(set(self.embedding) - valid)
        if unknown:
            raise DDBenchError(f"{method}: unknown method.embedding key(s) {unknown}; they are TeacherConfig fields: "
                               f"{sorted(valid)}.")


@register_method("dq")
class DatasetQuantization(Method):
    Options = DQOptions
    opts: DQOptions

    def distill(self) -> DistillResult:
        o = self.opts
        info, train = self.info, self.splits.train
        ipc, k_classes = self.ipc, info.num_classes
        counts = train.counts.to(self.device)
        if ipc > int(counts.min()):
            raise DDBenchError(f"dq selects real images: ipc={ipc} exceeds the smallest class ({int(counts.min())}).")
        num_bins, lam, features, fill = min(o.num_bins, ipc), o.lam, o.features, o.fill
        mask_ratio = o.mask_ratio if o.pixel else 0.0
        patch = o.patch or default_patch(info.image_size)
        if info.image_size % patch:
            raise DDBenchError(f"dq: method.patch={patch} does not divide the {info.image_size}-px images; "
                               "choose a divisor (or null for the default).")
        model = self._embedding_network()

        # 1. gradient embeddings, padded to [K, n_max, ·]
        n_max = int(counts.max())
        within = torch.arange(n_max, device=self.device)
        valid = within < counts.unsqueeze(1)
        rows = (train.offsets[:-1].to(self.device).unsqueeze(1) + within.clamp_max(counts.unsqueeze(1) - 1))
        delta, emb = self._gradient_parts(model, rows.flatten())
        delta = delta.view(k_classes, n_max, -1) * valid.unsqueeze(-1)
        emb = emb.view(k_classes, n_max, -1) * valid.unsqueeze(-1)
        sim = gradient_similarity(delta, emb) if features == "gradient" else embedding_similarity(emb)
        sim = sim * (valid.unsqueeze(-1) & valid.unsqueeze(1))

        # 2-3. bins, then uniform sampling from them
        bin_size = torch.tensor(bin_sizes(train.counts, num_bins), device=self.device, dtype=torch.long)
        bins = graphcut_bins(sim, valid, bin_size, num_bins, lam)
        picks = sample_from_bins(bins, num_bins, ipc, self.generator)  # [K, ipc]
        chosen = rows.gather(1, picks).flatten()  # dataset rows, class-major: the labels follow the rows
        images = train.images[chosen].clone()
        labels = self.hard_labels()
        meta: dict[str, Any] = {
            "dq": {
                "num_bins": num_bins, "bin_size": bin_size.tolist(), "lam": lam, "features": features,
                "gradient": o.gradient,
                "embedding": {"network": self.model_cfg["name"], "epochs": self._teacher_config().epochs,
                              "gradient_embedding_dim": int(delta.shape[-1] * (1 + emb.shape[-1]))},
                "keep_ratio": ipc * k_classes / len(train.images),
                "ipc_to_ratio": "keep_ratio = ipc * num_classes / N_train; images stored per class = ipc, of which "
                                "(1 - mask_ratio) of the patches are kept: ipc_equivalent = ipc * (1 - mask_ratio)",
                "mask_ratio": mask_ratio, "ipc_equivalent": ipc * (1 - mask_ratio),
                "selected_rows": chosen.tolist(),
            }
        }
        extras: dict[str, torch.Tensor] = {}
        if mask_ratio > 0:  # 4. patch drop by Grad-CAM + fill from the kept patches
            cam = torch.cat([grad_cam(model, images[i:i + 256], labels[i:i + 256], o.cam_layer)
                             for i in range(0, len(images), 256)])
            grid = (info.image_size // patch, info.image_size // patch)
            keep = keep_mask(cam, grid, mask_ratio)
            prior = fit_pixel_prior(train.images, o.fill_rank) if fill == "ppca" else None
            images = fill_dropped(images * pixel_mask(keep, patch), keep, patch, fill, prior)
            extras[MASK_NAME] = keep
            extras.update(prior or {})
            meta["decode"] = decode_rule(MASK_NAME, patch, fill, kept_bytes(keep, info.channels, patch, labels), prior)
            meta["dq"]["pixel"] = {"patch": patch, "fill": fill, "cam": "grad-cam of the embedding network, true class",
                                   "kept_patch_fraction": float(keep.float().mean())}
        return DistillResult(images, labels, extras=extras, meta=meta)

    def _teacher_config(self) -> TeacherConfig:
        cfg = dict(self.opts.embedding)
        cfg.setdefault("models", [self.model_cfg["name"]])
        cfg.setdefault("model_kwargs", {self.model_cfg["name"]: {k: v for k, v in self.model_cfg.items() if k != "name"}})
        return TeacherConfig(**cfg)

    def _embedding_network(self) -> torch.nn.Module:
        """The network trained on the real train set (cached as a teacher); the feature extractor and the CAM."""
        model = load_teacher(self._teacher_config(), self.splits, self.device, self.cache).members[0]
        if not hasattr(model, "feature_maps"):
            raise DDBenchError(f"dq needs a model with feature_maps(); {self.model_cfg['name']} has none.")
        return model

    @torch.no_grad()
    def _gradient_parts(self, model: torch.nn.Module, rows: torch.Tensor, chunk: int = 1024):
        """δ = softmax(z) − onehot(y) [n, K] and e = embed(x) [n, D] for training rows [n]."""
        deltas, embs = [], []
        for i in range(0, len(rows), chunk):
            x, y = self.splits.train.images[rows[i:i + chunk]], self.splits.train.labels[rows[i:i + chunk]]
            e = model.embed(x)
            z = model.classifier(e)
            deltas.append(logit_gradient(z, y, self.opts.gradient))
            embs.append(e)
        return torch.cat(deltas), torch.cat(embs)
