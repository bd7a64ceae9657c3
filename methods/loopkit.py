"""The loop kit of iterative distillation methods (trajectory matching, DM, ...): momentum SGD on raw tensors,
a device-side divergence guard that keeps the last good state, and the bookkeeping after an image step (checkpoints
themselves live in ddbench.training.checkpoint, shared with the trainer)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ddbench.methods.base import DistillDiverged, DistillResult
from ddbench.training.checkpoint import Checkpointer


class MomentumSGD:
    """SGD with momentum on one tensor, optionally skipping the step (device-side 0-d bool mask, no sync).

    buf ← μ·buf + g; p ← p − lr·buf (as torch.optim.SGD with dampening 0; the first step has buf = g).
    """

    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = float(lr), float(momentum)
        self.buf: Tensor | None = None

    @torch.no_grad()
    def step(self, param: Tensor, grad: Tensor, mask: Tensor | None = None) -> None:
        if self.buf is None:
            self.buf = torch.zeros_like(param)
        new_buf = self.momentum * self.buf + grad
        delta = self.lr * new_buf
        if mask is not None:
            new_buf = torch.where(mask, new_buf, self.buf)
            delta = torch.where(mask, delta, torch.zeros_like(delta))
        self.buf = new_buf
        param.sub_(delta)


class DivergenceGuard:
    """Tracks on the device the first iteration whose state is not ok and the last good state.

    update() never synchronises; first_bad() does (call it every `every` iterations, see due()).
    """

    def __init__(self, state: dict[str, Tensor | None], every: int):
        self.good = {k: None if v is None else v.detach().clone() for k, v in state.items()}
        device = next(v for v in state.values() if v is not None).device
        self.bad_at = torch.full((), -1, dtype=torch.long, device=device)
        self.every = max(int(every or 1), 1)

    @staticmethod
    def finite(*tensors: Tensor | None) -> Tensor:
        """0-d bool: every given tensor is finite."""
        return torch.stack([torch.isfinite(t).all() for t in tensors if t is not None]).all()

    def update(self, iteration: int, state: dict[str, Tensor | None], ok: Tensor) -> None:
        self.bad_at = torch.where((self.bad_at < 0) & ~ok, torch.full_like(self.bad_at, iteration), self.bad_at)
        alive = self.bad_at < 0
        for name, value in state.items():
            if self.good.get(name) is not None and value is not None:
                self.good[name] = torch.where(alive, value, self.good[name])

    def due(self, done: int, total: int) -> bool:
        return done % self.every == 0 or done == total

    def first_bad(self) -> int | None:
        """The first bad iteration, or None (one host synchronisation)."""
        bad = int(self.bad_at)
        return bad if bad >= 0 else None


def image_step_done(name: str, it: int, iterations: int, syn: Tensor, labels: Callable[[], Tensor],
                    guard: DivergenceGuard, ckpt: Checkpointer, optimizer: dict[str, MomentumSGD]) -> None:
    """Bookkeeping after iteration `it` of a loop that learns only the images syn [N,C,H,W] (DM, DataDAM): track
    divergence, raise DistillDiverged with the last good set when it is checked and found, checkpoint when due."""
    guard.update(it, {"images": syn}, DivergenceGuard.finite(syn))
    done = it + 1
    if guard.due(done, iterations) and (bad := guard.first_bad()) is not None:
        raise DistillDiverged(
            f"{name} diverged at iteration {bad}: the synthetic images became NaN/inf. No record is written. "
            f"Lower method.lr_img; the state after iteration {bad - 1} is kept as the last good artifact.",
            DistillResult(guard.good["images"].clone(), labels(), meta={"diverged_at": bad}))
    if ckpt.due(done, iterations):
        ckpt.save(done, {"images": syn}, optimizer)
