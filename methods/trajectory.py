"""Trajectory matching: the distillation loop shared by MTT, FTD and DATM.

One outer iteration: pick an expert τ and a start epoch t; start a student at θ̂_0 = θ*_t (flat vector
[P]); take N SGD steps θ̂_{n+1} = θ̂_n − α·∇ℓ(θ̂_n; A_n(x̃[I_n]), ỹ[I_n]) on minibatches I_n of the synthetic set
under fresh DSA draws A_n; the loss is ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖², differentiated through the
whole unroll into the images x̃, the step size α and (soft labels) ỹ, which take momentum-SGD steps.

The unroll is either ``plain`` (autograd keeps every step's double-backward graph: memory ∝ N) or
``recompute`` (the forward sweep keeps only θ̂_0..θ̂_{N-1}, the minibatch rows and the DSA draws; the
backward sweep rebuilds one step's graph at a time with the same augmentation and back-propagates the
adjoint of θ̂_{n+1}: the same gradient with the memory of one step).

Nothing in an iteration waits for the device: the expert, start epoch, rows and draws are sampled on the
device from the run's generator; divergence (NaN / non-positive α) is tracked on the device and checked
every ``guard_every`` iterations, naming the first bad iteration and keeping the last good state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ddbench.augment import DSA, DSADraw
from ddbench.methods.base import DistillDiverged, DistillResult, Method
from ddbench.training.embedding import data_fingerprint
from ddbench.methods.experts import ExpertSpec, build_template, load_or_train_experts
from ddbench.training import FlatModel
from ddbench.utils import DDBenchError

log = logging.getLogger(__name__)

UNROLLS = ("plain", "recompute")
INITS = ("real", "noise", "correct_real")
LABELS = ("hard", "soft")
# Options that change how a run is executed or reported, not what it computes (left out of checkpoint keys).
# Options every method may receive from the pipeline.
GENERIC_OPTIONS = ("progress", "output_dir")
VOLATILE_OPTIONS = ("progress", "resume", "checkpoint_every", "guard_every", "log_every", "iterations", "output_dir")


# ----------------------------------------------------------------------------------------- pieces


def matching_loss(student: Tensor, start: Tensor, target: Tensor) -> Tensor:
    """‖student − target‖² / ‖start − target‖² (flat parameter vectors [P]; the /P of both sums cancels)."""
    return (student - target).pow(2).sum() / (start - target).pow(2).sum()


def start_epoch_bound(
    iteration: int, max_start: int, current_max: int | None = None, expansion_end: int | None = None
) -> int:
    """Exclusive upper bound of the start epoch at `iteration`.

    Without a schedule it is max_start. DATM's sequential generation grows it from current_max to max_start
    over expansion_end iterations: min(current_max + ⌊(max_start − current_max)·it / expansion_end⌋, max_start).
    """
    if current_max is None or not expansion_end:
        return int(max_start)
    grown = int(current_max) + (int(max_start) - int(current_max)) * int(iteration) // int(expansion_end)
    return min(grown, int(max_start))


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


# ----------------------------------------------------------------------------------------- the method


@dataclass
class _State:
    """What a checkpoint holds (all tensors)."""

    images: Tensor
    lr: Tensor
    labels: Tensor
    ema: Tensor | None
    opt: dict[str, MomentumSGD] = field(default_factory=dict)


class TrajectoryMatching(Method):
    """Base of MTT/FTD/DATM. Subclasses set ``defaults`` (option values used when the config leaves them out)."""

    defaults: dict[str, Any] = {
        "experts": {},
        "iterations": 5000,
        "syn_steps": 20,
        "expert_epochs": 3,
        "min_start_epoch": 0,
        "max_start_epoch": 25,
        "sequential_generation": False,
        "current_max_start_epoch": None,
        "expansion_end": None,
        "batch_syn": None,
        "lr_img": 1000.0,
        "lr_lr": 1e-5,
        "lr_teacher": 0.01,
        "momentum_img": 0.5,
        "momentum_lr": 0.5,
        "lr_y": 2.0,
        "momentum_y": 0.9,
        "init": "real",
        "labels": "hard",
        "label_epoch": -1,
        "threshold": None,
        "ema_decay": None,
        "unroll": "plain",
        "model_overrides": {},
        "checkpoint_every": 500,
        "resume": "auto",
        "guard_every": 10,
        "log_every": 100,
    }

    def opt(self, key: str) -> Any:
        value = self.options.get(key)
        return self.defaults.get(key) if value is None and key not in self.options else value

    # ------------------------------------------------------------------ configuration
    def expert_spec(self) -> ExpertSpec:
        return ExpertSpec.from_dict({**(self.defaults.get("experts") or {}), **(self.options.get("experts") or {})})

    def student_cfg(self) -> dict[str, Any]:
        return {**self.model_cfg, **(self.opt("model_overrides") or {})}

    def window(self) -> tuple[int | None, int | None]:
        """(current_max_start_epoch, expansion_end) when sequential generation is on, else (None, None)."""
        if not self.opt("sequential_generation"):
            return None, None
        cur, end = self.opt("current_max_start_epoch"), self.opt("expansion_end")
        if cur is None or not end:
            raise DDBenchError("sequential_generation=true needs current_max_start_epoch and expansion_end > 0.")
        return int(cur), int(end)

    def _validate(self, spec: ExpertSpec) -> None:
        unknown = sorted(set(self.options) - set(self.defaults) - set(GENERIC_OPTIONS))
        if unknown:
            raise DDBenchError(f"unknown {self.name} option(s) {unknown}; valid options: {sorted(self.defaults)}.")
        m, lo, hi = int(self.opt("expert_epochs")), int(self.opt("min_start_epoch")), int(self.opt("max_start_epoch"))
        if self.opt("unroll") not in UNROLLS:
            raise DDBenchError(f"method.unroll must be one of {UNROLLS}, got {self.opt('unroll')!r}.")
        if self.opt("init") not in INITS:
            raise DDBenchError(f"method.init must be one of {INITS}, got {self.opt('init')!r}.")
        if self.opt("labels") not in LABELS:
            raise DDBenchError(f"method.labels must be one of {LABELS}, got {self.opt('labels')!r}.")
        if m < 1 or int(self.opt("syn_steps")) < 1:
            raise DDBenchError("method.expert_epochs and method.syn_steps must be >= 1.")
        if not float(self.opt("lr_teacher")) > 0:
            raise DDBenchError(f"method.lr_teacher (the initial synthetic lr) must be > 0, not {self.opt('lr_teacher')}.")
        batch_syn = self.opt("batch_syn")
        if batch_syn is not None and not 1 <= int(batch_syn) <= self.ipc * self.info.num_classes:
            raise DDBenchError(f"method.batch_syn={batch_syn} must be in [1, {self.ipc * self.info.num_classes}] "
                               "(the synthetic set's size), or null for the whole set.")
        first_bound = start_epoch_bound(0, hi, *self.window())
        if not 0 <= lo < first_bound:
            raise DDBenchError(
                f"start epochs are drawn from [min_start_epoch, bound) = [{lo}, {first_bound}); it is empty. "
                "Set min_start_epoch < current_max_start_epoch (or max_start_epoch)."
            )
        if hi - 1 + m > spec.epochs:
            raise DDBenchError(
                f"experts are trained for {spec.epochs} epochs but start epochs up to {hi - 1} plus expert_epochs={m} "
                f"need {hi - 1 + m}; set experts.epochs >= {hi - 1 + m} or lower max_start_epoch."
            )

    # ------------------------------------------------------------------ initialisation
    def init_images(self, model: FlatModel, finals: Tensor) -> Tensor:
        kind = self.opt("init")
        if kind == "noise":
            return torch.randn((self.ipc * self.info.num_classes, *self.info.shape), device=self.device,
                               generator=self.generator)
        if kind == "correct_real":
            return self.correct_real_init(model, finals)
        return self.real_init()

    def correct_real_init(self, model: FlatModel, finals: Tensor) -> Tensor:
        """Per class, ipc real images in random order that the experts' final networks classify correctly.

        Expert 0 first; when a class runs out, images correct under the next experts are added; if all experts
        together give fewer than ipc, random remaining images of the class fill the gap (logged).
        """
        train, chosen = self.splits.train, []
        for c in range(self.info.num_classes):
            sl = train.class_slice(c)
            count = sl.stop - sl.start
            order = torch.randperm(count, generator=self.generator, device=self.device) + sl.start
            taken = torch.zeros(count, dtype=torch.bool, device=self.device)
            picks: list[Tensor] = []
            need = self.ipc
            for e in range(len(finals)):
                if need == 0:
                    break
                pred = model.predict(finals[e], train.images[order]).argmax(-1)
                ok = ((pred == c) & ~taken).nonzero().flatten()[:need]
                taken[ok] = True
                picks.append(order[ok])
                need -= len(ok)
            if need > 0:
                log.warning("class %d: only %d images are classified correctly by the experts; %d random ones added",
                            c, self.ipc - need, need)
                rest = (~taken).nonzero().flatten()[:need]
                picks.append(order[rest])
            chosen.append(torch.cat(picks))
        return self.splits.train.images[torch.cat(chosen)].clone()

    def init_labels(self, model: FlatModel, images: Tensor, finals: Tensor) -> Tensor:
        """Hard labels, or (labels=soft) logits of the experts' final networks on the images.

        correct_real init: per image the mean logit vector over the experts whose prediction is right (all experts
        where none is); other inits: expert 0's logits.
        """
        hard = self.hard_labels()
        if self.opt("labels") == "hard":
            return hard
        if self.opt("init") != "correct_real":
            return model.predict(finals[0], images).float()
        logits = torch.stack([model.predict(t, images) for t in finals])  # [X, n, K]
        right = (logits.argmax(-1) == hard).float()  # [X, n]
        count = right.sum(0)
        mean_right = (logits * right[..., None]).sum(0) / count.clamp_min(1)[:, None]
        soft = torch.where((count > 0)[:, None], mean_right, logits.mean(0))
        log.info("soft labels from %d experts: initial label accuracy %.1f%%", len(finals),
                 100 * float((soft.argmax(-1) == hard).float().mean()))
        return soft.float()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_key(self, expert_fp: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in self.options.items() if k not in VOLATILE_OPTIONS}
        return {"method": self.name, "options": options, "defaults": self.defaults, "model": self.model_cfg,
                "augment": self.augment_cfg, "ipc": self.ipc, "seed": self.seed, "experts": expert_fp,
                "device": self.device.type}

    def save_checkpoint(self, key: dict[str, Any], state: _State, iteration: int, perm: Tensor) -> None:
        tensors = {"images": state.images, "lr": state.lr, "labels": state.labels, "perm": perm,
                   "iteration": torch.tensor(iteration), "generator": self.generator.get_state()}
        if state.ema is not None:
            tensors["ema"] = state.ema
        for name, opt in state.opt.items():
            if opt.buf is not None:
                tensors[f"buf_{name}"] = opt.buf
        self.cache.save("checkpoints", key, tensors)

    def load_checkpoint(self, key: dict[str, Any], state: _State, iterations: int) -> tuple[int, Tensor | None]:
        """Restore `state` in place from a matching checkpoint; returns (next iteration, expert permutation)."""
        mode = str(self.opt("resume")).lower()
        if mode in ("false", "0", "no", "never"):
            return 0, None
        path = self.cache.path("checkpoints", key)
        if not path.is_file():
            if mode == "true":
                log.warning("resume=true but no checkpoint matches this configuration (looked for %s)", path)
            return 0, None
        found = self.cache.load("checkpoints", key)
        assert found is not None
        done = int(found["iteration"])
        if done > iterations:
            log.warning("checkpoint at iteration %d is past iterations=%d; starting over", done, iterations)
            return 0, None
        with torch.no_grad():
            state.images.copy_(found["images"])
            state.lr.copy_(found["lr"])
            state.labels.copy_(found["labels"])
            if state.ema is not None:
                state.ema.copy_(found["ema"])
        for name, opt in state.opt.items():
            if f"buf_{name}" in found:
                opt.buf = found[f"buf_{name}"].to(self.device)
        self.generator.set_state(found["generator"])
        log.info("resuming from the checkpoint at iteration %d (%s)", done, path)
        return done, found["perm"].to(self.device)

    # ------------------------------------------------------------------ the loop
    def distill(self) -> DistillResult:
        spec = self.expert_spec()
        self._validate(spec)
        info, device = self.info, self.device
        student_cfg = self.student_cfg()
        experts = load_or_train_experts(self.splits, student_cfg, spec, self.augment_cfg, device, self.cache,
                                        progress=bool(self.opt("progress")))
        m = int(self.opt("expert_epochs"))
        min_start, max_start = int(self.opt("min_start_epoch")), int(self.opt("max_start_epoch"))
        cur_max, expansion = self.window()
        keep = max_start - 1 + m + 1  # snapshots 0 .. max_start-1+M
        label_epoch = int(self.opt("label_epoch"))
        finals = experts[:, label_epoch].to(device)  # [X, P], for correct_real init and soft labels
        n_experts = experts.shape[0]
        buffer = experts[:, :keep].reshape(n_experts * keep, -1).to(device)  # [X*keep, P]
        del experts
        model = FlatModel(build_template(student_cfg, self.splits).to(device))

        images = self.init_images(model, finals).detach().clone()
        labels = self.init_labels(model, images, finals).detach().clone()
        soft = labels.is_floating_point()
        del finals
        state = _State(
            images=images, labels=labels,
            lr=torch.tensor(float(self.opt("lr_teacher")), device=device),
            ema=images.clone() if self.opt("ema_decay") is not None else None,
            opt={"images": MomentumSGD(self.opt("lr_img"), self.opt("momentum_img")),
                 "lr": MomentumSGD(self.opt("lr_lr"), self.opt("momentum_lr"))},
        )
        if soft:
            state.opt["labels"] = MomentumSGD(self.opt("lr_y"), self.opt("momentum_y"))
        iterations = int(self.opt("iterations"))
        ckpt_every = int(self.opt("checkpoint_every") or 0)
        expert_fp = {"data": data_fingerprint(self.splits), "spec": spec.recipe(), "n": n_experts, "model": student_cfg}
        ckpt_key = self.checkpoint_key(expert_fp)
        start_it, perm = self.load_checkpoint(ckpt_key, state, iterations) if ckpt_every else (0, None)

        n_syn = len(state.images)
        batch_syn = int(self.opt("batch_syn") or n_syn)
        steps = int(self.opt("syn_steps"))
        dsa = self.make_augment()
        unroll = unroll_recompute if self.opt("unroll") == "recompute" else unroll_plain
        threshold = self.opt("threshold")
        ema_decay = self.opt("ema_decay")
        guard_every = max(int(self.opt("guard_every") or 1), 1)
        log_every = int(self.opt("log_every") or 0)
        good = {"images": state.images.clone(), "lr": state.lr.clone(), "labels": state.labels.clone(),
                "ema": None if state.ema is None else state.ema.clone()}
        bad_at = torch.full((), -1, dtype=torch.long, device=device)
        loss_sum = torch.zeros((), device=device)
        loss = torch.zeros((), device=device)

        bar = tqdm(range(start_it, iterations), desc=self.name, disable=not self.opt("progress"),
                   initial=start_it, total=iterations)
        for it in bar:
            if perm is None or it % n_experts == 0:
                perm = torch.randperm(n_experts, generator=self.generator, device=device)
            bound = start_epoch_bound(it, max_start, cur_max, expansion)
            t = torch.randint(min_start, bound, (1,), generator=self.generator, device=device)
            row = perm[it % n_experts : it % n_experts + 1] * keep + t
            pair = buffer.index_select(0, torch.cat([row, row + m]))  # [2, P]: θ*_t, θ*_{t+M}
            start, target = pair[0], pair[1]
            rows = sample_rows(n_syn, batch_syn, steps, self.generator)
            draw = dsa.sample((steps * batch_syn, *info.shape), self.generator, groups=steps) if dsa else None
            u = Unroll(model, rows, dsa, draw)

            x_p = state.images.detach().requires_grad_(True)
            lr_p = state.lr.detach().requires_grad_(True)
            y_p = state.labels.detach().requires_grad_(soft)
            outer = [x_p, lr_p] + ([y_p] if soft else [])
            theta0 = start.detach().clone().requires_grad_(True)
            final = unroll(u, theta0, x_p, lr_p, y_p)
            loss = matching_loss(final, start, target)
            grads = torch.autograd.grad(loss, outer)
            del final, u
            mask = None if threshold is None else loss.detach() <= float(threshold)
            state.opt["images"].step(state.images, grads[0], mask)
            state.opt["lr"].step(state.lr, grads[1], mask)
            if soft:
                state.opt["labels"].step(state.labels, grads[2], mask)
            if state.ema is not None:
                state.ema.mul_(float(ema_decay)).add_(state.images, alpha=1.0 - float(ema_decay))

            # divergence bookkeeping on the device
            ok = torch.isfinite(state.images).all() & torch.isfinite(state.lr) & (state.lr > 0)
            if soft:
                ok = ok & torch.isfinite(state.labels).all()
            if state.ema is not None:
                ok = ok & torch.isfinite(state.ema).all()
            bad_at = torch.where((bad_at < 0) & ~ok, torch.full_like(bad_at, it), bad_at)
            alive = bad_at < 0
            for name in ("images", "lr", "labels", "ema"):
                if good[name] is not None:
                    good[name] = torch.where(alive, getattr(state, name), good[name])
            loss_sum += loss.detach()

            done = it + 1
            if done % guard_every == 0 or done == iterations or (ckpt_every and done % ckpt_every == 0):
                first_bad = int(bad_at)
                if first_bad >= 0:
                    self._diverged(first_bad, good, soft)
            if log_every and done % log_every == 0:
                mean = float(loss_sum) / log_every
                loss_sum.zero_()
                log.info("%s iteration %d/%d: matching loss %.4f, lr %.3g", self.name, done, iterations, mean,
                         float(state.lr))
                bar.set_postfix(loss=f"{mean:.4f}")
            if ckpt_every and done % ckpt_every == 0 and done < iterations:
                self.save_checkpoint(ckpt_key, state, done, perm)
        bar.close()
        if ckpt_every:
            path = self.cache.path("checkpoints", ckpt_key)
            if path.is_file():
                path.unlink()
        images_out = state.ema if state.ema is not None else state.images
        meta = {"final_loss": float(loss.detach()), "learned_lr": float(state.lr), "iterations": iterations,
                "num_experts": n_experts, "expert_recipe": spec.recipe(), "unroll": self.opt("unroll")}
        if state.ema is not None:
            meta["ema_decay"] = float(ema_decay)
        return DistillResult(images_out.detach().clone(), state.labels.detach().clone(), state.lr.detach().clone(),
                             meta=meta)

    def _diverged(self, iteration: int, good: dict[str, Tensor | None], soft: bool) -> None:
        lr = float(good["lr"])  # type: ignore[arg-type]
        images = good["ema"] if good["ema"] is not None else good["images"]
        assert images is not None and good["labels"] is not None and good["lr"] is not None
        result = DistillResult(images.detach().clone(), good["labels"].detach().clone(), good["lr"].detach().clone(),
                               meta={"iteration": iteration - 1, "diverged_at": iteration, "learned_lr": lr})
        what = "soft labels, " if soft else ""
        raise DistillDiverged(
            f"{self.name} diverged at iteration {iteration}: the synthetic images, {what}learned lr or EMA became "
            f"NaN/inf or the learned lr became <= 0 (last good lr {lr:.4g}). No record is written. "
            "Lower method.lr_img / method.lr_lr (or method.lr_y), or raise method.lr_teacher; the state after "
            f"iteration {iteration - 1} is kept as the last good artifact.",
            result,
        )
