"""The inner problem of trajectory matching and its two unroll engines.

A student starts at θ̂_0 (flat vector [P]) and takes N SGD steps θ̂_{n+1} = θ̂_n − α·∇ℓ(θ̂_n; A_n(x̃[I_n]), ỹ[I_n])
on minibatches I_n of the synthetic set under fresh DSA draws A_n. ``unroll_plain`` keeps autograd's graph of
every step (memory ∝ N, the reference behaviour); ``unroll_recompute`` keeps only θ̂_0..θ̂_{N-1}, the rows and
the draws, and rebuilds one step's graph at a time in the backward sweep: the same gradient with the memory
of one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.augment import DSA, DSADraw
from ddbench.training import FlatModel


def sample_rows(n: int, batch: int, steps: int, generator: torch.Generator) -> Tensor:
    """Minibatch rows [steps, batch] of a set of n: consecutive chunks of fresh random permutations."""
    perms = math.ceil(steps * batch / n)
    order = torch.rand(perms, n, generator=generator, device=generator.device).argsort(dim=1)
    return order.flatten()[: steps * batch].view(steps, batch)


def slice_draw(draw: DSADraw, step: int, batch: int) -> DSADraw:
    """Step `step` of a draw sampled for `steps` groups of `batch` samples (one group per inner step)."""
    lo, hi = step * batch, (step + 1) * batch
    return DSADraw(
        ops=draw.ops, op=draw.op[step : step + 1], groups=1, per_sample=True, batch=batch, size=draw.size,
        brightness=draw.brightness[lo:hi], saturation=draw.saturation[lo:hi], contrast=draw.contrast[lo:hi],
        crop=draw.crop[lo:hi], cutout_center=draw.cutout_center[lo:hi], cutout_size=draw.cutout_size,
        flip=draw.flip[lo:hi], scale=draw.scale[lo:hi], angle=draw.angle[lo:hi],
    )


def inner_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy; float targets [B,K] are logits of soft labels (soft CE on their softmax)."""
    if targets.is_floating_point():
        return -(targets.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    return F.cross_entropy(logits, targets)


@dataclass
class Unroll:
    """One outer iteration's inner problem: the student network, minibatch rows [N,b] and DSA draw (or None)."""

    model: FlatModel
    rows: Tensor
    dsa: DSA | None = None
    draw: DSADraw | None = None

    @property
    def steps(self) -> int:
        return self.rows.shape[0]

    def step_inputs(self, step: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.rows[step]
        x = images[rows]
        if self.dsa is not None and self.draw is not None:
            x = self.dsa.apply(x, slice_draw(self.draw, step, rows.shape[0]))
        return x, labels[rows]

    def step_grad(self, theta: Tensor, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
        loss = inner_loss(self.model(theta, x), y)
        (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return g


def unroll_plain(u: Unroll, theta0: Tensor, images: Tensor, lr: Tensor, labels: Tensor) -> Tensor:
    """θ̂_N with autograd's graph of all N steps kept (the reference behaviour). theta0 [P] must require grad.

    The N minibatches are gathered and augmented in one batched call (the same draw as step-by-step).
    """
    n, b = u.rows.shape
    flat_rows = u.rows.flatten()
    xs = images[flat_rows]
    if u.dsa is not None and u.draw is not None:
        xs = u.dsa.apply(xs, u.draw)
    ys = labels[flat_rows]
    theta = theta0
    for step in range(n):
        g = u.step_grad(theta, xs[step * b : (step + 1) * b], ys[step * b : (step + 1) * b], create_graph=True)
        theta = theta - lr * g
    return theta


class _RecomputeUnroll(torch.autograd.Function):
    """θ̂_N = unroll(θ̂_0, x̃, α, ỹ) with an exact, step-by-step recomputing backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, theta0: Tensor, images: Tensor, lr: Tensor, labels: Tensor, u: Unroll
    ) -> Tensor:
        thetas = torch.empty(u.steps, theta0.shape[0], dtype=theta0.dtype, device=theta0.device)
        theta = theta0.detach()
        x_img, y_lab, step_lr = images.detach(), labels.detach(), lr.detach()
        for step in range(u.steps):
            thetas[step] = theta
            with torch.enable_grad():
                leaf = theta.detach().requires_grad_(True)
                x, y = u.step_inputs(step, x_img, y_lab)
                g = u.step_grad(leaf, x, y, create_graph=False)
            theta = theta - step_lr * g
        ctx.u = u
        ctx.save_for_backward(thetas, images, lr, labels)
        return theta

    @staticmethod
    def backward(ctx, adjoint: Tensor):  # type: ignore[override]
        thetas, images, lr, labels = ctx.saved_tensors
        u: Unroll = ctx.u
        need_theta, need_x, need_lr, need_y, _ = ctx.needs_input_grad
        need_y = need_y and labels.is_floating_point()
        with torch.enable_grad():
            x_leaf = images.detach().requires_grad_(need_x)
            lr_leaf = lr.detach().requires_grad_(need_lr)
            y_leaf = labels.detach().requires_grad_(need_y)
            wanted = [t for t, need in ((x_leaf, need_x), (lr_leaf, need_lr), (y_leaf, need_y)) if need]
            grads = [torch.zeros_like(t) for t in wanted]
            for step in reversed(range(u.steps)):
                theta = thetas[step].detach().requires_grad_(True)
                x, y = u.step_inputs(step, x_leaf, y_leaf)
                g = u.step_grad(theta, x, y, create_graph=True)
                nxt = theta - lr_leaf * g
                found = torch.autograd.grad(nxt, [theta, *wanted], grad_outputs=adjoint, allow_unused=True)
                adjoint = found[0].detach()
                for acc, got in zip(grads, found[1:]):
                    if got is not None:
                        acc += got
        it = iter(grads)
        return (adjoint if need_theta else None, next(it) if need_x else None, next(it) if need_lr else None,
                next(it) if need_y else None, None)


def unroll_recompute(u: Unroll, theta0: Tensor, images: Tensor, lr: Tensor, labels: Tensor) -> Tensor:
    """θ̂_N with memory independent of N; its gradients equal unroll_plain's."""
    return _RecomputeUnroll.apply(theta0, images, lr, labels, u)
