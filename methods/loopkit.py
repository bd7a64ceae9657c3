"""The loop kit of iterative distillation methods (trajectory matching, DM, ...): momentum SGD on raw tensors,
a device-side divergence guard that keeps the last good state, and checkpoints to resume an interrupted run."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
from torch import Tensor

from ddbench.cache import Cache
from ddbench.methods.base import DistillDiverged, DistillResult

log = logging.getLogger(__name__)
NEVER = ("false", "0", "no", "never")


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


class Checkpointer:
    """Saves and restores a loop's tensors, momentum buffers and RNG states in the cache (kind "checkpoints").

    resume: 'auto' resumes from a checkpoint of the same key when there is one; 'true' also warns when there is
    none; 'false' starts over. every = 0 disables checkpoints.
    """

    def __init__(self, cache: Cache, key: dict[str, Any], every: int, resume: Any, generator: torch.Generator,
                 global_rng: bool = False):
        self.cache, self.key, self.every = cache, key, int(every or 0)
        self.resume = str(resume).lower()
        self.generator, self.global_rng = generator, global_rng
        self.started, self.prior_seconds = time.perf_counter(), 0.0  # prior: the time of earlier, interrupted parts

    def due(self, done: int, total: int) -> bool:
        return bool(self.every) and done % self.every == 0 and done < total

    def save(self, iteration: int, tensors: dict[str, Tensor | None], opts: dict[str, MomentumSGD]) -> None:
        out = {k: v for k, v in tensors.items() if v is not None}
        out.update({f"buf_{k}": o.buf for k, o in opts.items() if o.buf is not None})
        out["iteration"] = torch.tensor(iteration)
        out["generator"] = self.generator.get_state()
        out["seconds"] = torch.tensor(self.prior_seconds + time.perf_counter() - self.started, dtype=torch.float64)
        if self.global_rng:
            out["global_rng"] = torch.get_rng_state()
        self.cache.save("checkpoints", self.key, out)

    def load(self, tensors: dict[str, Tensor | None], opts: dict[str, MomentumSGD], iterations: int
             ) -> tuple[int, dict[str, Tensor]]:
        """Restore `tensors` (in place) and `opts` from a matching checkpoint: (next iteration, what was stored)."""
        if not self.every or self.resume in NEVER:
            return 0, {}
        path = self.cache.path("checkpoints", self.key)
        if not path.is_file():
            if self.resume == "true":
                log.warning("resume=true but no checkpoint matches this configuration (looked for %s)", path)
            return 0, {}
        needed = ("iteration", "generator", *(k for k, v in tensors.items() if v is not None))
        found = self.cache.load("checkpoints", self.key, required=needed)
        if found is None:  # corrupted: the cache set it aside
            return 0, {}
        done = int(found["iteration"])
        if done > iterations:
            log.warning("checkpoint at iteration %d is past iterations=%d; starting over", done, iterations)
            return 0, {}
        with torch.no_grad():
            for name, value in tensors.items():
                if value is not None:
                    value.copy_(found[name])
        for name, opt in opts.items():
            if f"buf_{name}" in found:
                opt.buf = found[f"buf_{name}"].to(self.generator.device)
        self.generator.set_state(found["generator"])
        if self.global_rng:
            torch.set_rng_state(found["global_rng"])
        self.prior_seconds = float(found["seconds"]) if "seconds" in found else 0.0
        log.info("resuming from the checkpoint at iteration %d (%s)", done, path)
        return done, found

    def clear(self) -> None:
        if self.every:
            path = self.cache.path("checkpoints", self.key)
            if path.is_file():
                path.unlink()


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
