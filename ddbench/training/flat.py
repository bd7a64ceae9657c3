"""Networks as flat parameter vectors: one module used as a pure function of a vector [P], and S such networks
as the rows of one leaf tensor [S,P] that the trainer trains like any network batch (experts, GSAM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


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


class FlatNetworks:
    """S networks of one architecture as the rows of one leaf tensor thetas [S,P] (trained in place).

    forward(x [S,B,C,H,W]) → logits [S,B,K]; forward_at(thetas, x) runs other parameter values (GSAM's
    perturbed point). With record=True the trainer's end_epoch() appends a snapshot, so `trajectory` is
    [S, epochs+1, P]: the initial vectors and the vectors after every epoch.
    """

    flat = True

    def __init__(self, model: FlatModel, thetas: Tensor, use_vmap: bool = False, name: str = "flat",
                 record: bool = False):
        self.model, self.use_vmap, self.name = model, use_vmap, name
        self.thetas = thetas.detach().clone().requires_grad_(True)
        self.snapshots: list[Tensor] | None = [self.thetas.detach().clone()] if record else None

    def __len__(self) -> int:
        return self.thetas.shape[0]

    def parameters(self) -> list[Tensor]:
        return [self.thetas]

    def train(self, mode: bool = True) -> "FlatNetworks":
        return self  # FlatModel always normalises with batch statistics

    def forward_at(self, thetas: Tensor, x: Tensor) -> Tensor:
        return self.model.forward_many(thetas, x, self.use_vmap)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_at(self.thetas, x)

    __call__ = forward

    def end_epoch(self) -> None:
        if self.snapshots is not None:
            self.snapshots.append(self.thetas.detach().clone())

    @property
    def trajectory(self) -> Tensor:
        """[S, snapshots, P]."""
        assert self.snapshots is not None, "FlatNetworks(record=True) keeps the trajectory"
        return torch.stack(self.snapshots, dim=1)

    def all_finite(self) -> Tensor:
        return torch.isfinite(self.thetas).all()


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


