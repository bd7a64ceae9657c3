"""Trajectory matching: the distillation loop shared by MTT, FTD and DATM.

One outer iteration: pick an expert τ and a start epoch t; start a student at θ̂_0 = θ*_t (flat vector [P]);
unroll N student steps on the synthetic set (methods/unroll.py); the loss is ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²,
differentiated through the whole unroll into the images x̃, the step size α and (soft labels) ỹ, which take
momentum-SGD steps (methods/loopkit.py).

Nothing in an iteration waits for the device: the expert, start epoch, rows and draws are sampled on the
device from the run's generator; divergence (NaN / non-positive α) is tracked on the device and checked
every ``guard_every`` iterations, naming the first bad iteration and keeping the last good state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddbench.methods.base import DistillDiverged, DistillResult, Method
from ddbench.methods.experts import ExpertSpec, build_template, load_or_train_experts
from ddbench.methods.loopkit import DivergenceGuard, MomentumSGD
from ddbench.methods.options import RUN_CONTROL_OPTIONS, MethodOptions, option
from ddbench.methods.trajectory_init import correct_real_images, expert_soft_labels
from ddbench.methods.unroll import Unroll, sample_rows, unroll_plain, unroll_recompute
from ddbench.training import FlatModel, data_fingerprint, layout_digest
from ddbench.training.checkpoint import Checkpointer
from ddbench.utils import DDBenchError

log = logging.getLogger(__name__)

UNROLLS = ("plain", "recompute")
INITS = ("real", "noise", "correct_real")
LABELS = ("hard", "soft")
VOLATILE_OPTIONS = (*RUN_CONTROL_OPTIONS, "iterations")  # left out of checkpoint keys


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


def sample_start_epoch(iteration: int, min_start: int, max_start: int, window: tuple[int | None, int | None],
                       generator: torch.Generator) -> Tensor:
    """The start epoch t [1] of `iteration`, uniform in [min_start, start_epoch_bound(iteration, ...)), on the device."""
    bound = start_epoch_bound(iteration, max_start, *window)
    return torch.randint(min_start, bound, (1,), generator=generator, device=generator.device)


@dataclass
class TrajectoryOptions(MethodOptions):
    """The options of MTT/FTD/DATM (conf/method/mtt.yaml documents each); subclasses change defaults only."""

    experts: ExpertSpec = field(default_factory=ExpertSpec)
    iterations: int = option(5000, low=1)
    syn_steps: int = option(20, low=1)
    expert_epochs: int = option(3, low=1)
    min_start_epoch: int = option(0, low=0)
    max_start_epoch: int = option(25, low=1)
    sequential_generation: bool = False
    current_max_start_epoch: int | None = option(None, low=1)
    expansion_end: int | None = option(None, low=1)
    batch_syn: int | None = option(None, low=1)
    lr_img: float = option(1000.0, positive=True)
    lr_lr: float = option(1e-5, low=0)
    lr_teacher: float = option(0.01, positive=True)
    momentum_img: float = option(0.5, low=0)
    momentum_lr: float = option(0.5, low=0)
    lr_y: float = option(2.0, low=0)
    momentum_y: float = option(0.9, low=0)
    init: str = option("real", choices=INITS)
    labels: str = option("hard", choices=LABELS)
    label_epoch: int = -1
    threshold: float | None = None
    ema_decay: float | None = None
    unroll: str = option("plain", choices=UNROLLS)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = option(500, low=0)
    resume: Any = "auto"
    guard_every: int = option(10, low=1)
    log_every: int = option(100, low=0)

    def window(self) -> tuple[int | None, int | None]:
        """(current_max_start_epoch, expansion_end) when sequential generation is on, else (None, None)."""
        if not self.sequential_generation:
            return None, None
        if self.current_max_start_epoch is None or not self.expansion_end:
            raise DDBenchError("sequential_generation=true needs current_max_start_epoch and expansion_end > 0.")
        return int(self.current_max_start_epoch), int(self.expansion_end)

    def check(self, method: str) -> None:
        m, lo, hi = self.expert_epochs, self.min_start_epoch, self.max_start_epoch
        first_bound = start_epoch_bound(0, hi, *self.window())
        if not 0 <= lo < first_bound:
            raise DDBenchError(
                f"start epochs are drawn from [min_start_epoch, bound) = [{lo}, {first_bound}); it is empty. "
                "Set min_start_epoch < current_max_start_epoch (or max_start_epoch)."
            )
        if hi - 1 + m > self.experts.epochs:
            raise DDBenchError(
                f"experts are trained for {self.experts.epochs} epochs but start epochs up to {hi - 1} plus "
                f"expert_epochs={m} need {hi - 1 + m}; set experts.epochs >= {hi - 1 + m} or lower max_start_epoch."
            )


@dataclass
class _State:
    """What a checkpoint holds (all tensors)."""

    images: Tensor
    lr: Tensor
    labels: Tensor
    ema: Tensor | None
    opt: dict[str, MomentumSGD] = field(default_factory=dict)

    def tensors(self) -> dict[str, Tensor | None]:
        return {"images": self.images, "lr": self.lr, "labels": self.labels, "ema": self.ema}


class TrajectoryMatching(Method):
    """Base of MTT/FTD/DATM."""

    Options = TrajectoryOptions
    opts: TrajectoryOptions

    # ------------------------------------------------------------------ configuration
    def expert_spec(self) -> ExpertSpec:
        return self.opts.experts

    def student_cfg(self) -> dict[str, Any]:
        return {**self.model_cfg, **(self.opts.model_overrides or {})}

    def _validate(self) -> None:
        batch_syn = self.opts.batch_syn
        if batch_syn is not None and not 1 <= int(batch_syn) <= self.ipc * self.info.num_classes:
            raise DDBenchError(f"method.batch_syn={batch_syn} must be in [1, {self.ipc * self.info.num_classes}] "
                               "(the synthetic set's size), or null for the whole set.")

    # ------------------------------------------------------------------ initialisation
    def init_images(self, model: FlatModel, finals: Tensor) -> Tensor:
        kind = self.opts.init
        if kind == "noise":
            return torch.randn((self.ipc * self.info.num_classes, *self.info.shape), device=self.device,
                               generator=self.generator)
        if kind == "correct_real":
            return correct_real_images(model, finals, self.splits.train, self.ipc, self.generator)
        return self.real_init()

    def init_labels(self, model: FlatModel, images: Tensor, finals: Tensor) -> Tensor:
        """Hard labels, or (labels=soft) logits of the experts' final networks on the images."""
        hard = self.hard_labels()
        if self.opts.labels == "hard":
            return hard
        return expert_soft_labels(model, images, hard, finals, mean_of_correct=self.opts.init == "correct_real")

    def checkpoint_key(self, expert_fp: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in self.opts.to_dict().items() if k not in VOLATILE_OPTIONS}
        return {"method": self.name, "options": options, "model": self.model_cfg, "augment": self.augment_cfg,
                "ipc": self.ipc, "seed": self.seed, "experts": expert_fp, "device": self.device.type}

    # ------------------------------------------------------------------ the loop
    def distill(self) -> DistillResult:
        o, spec = self.opts, self.opts.experts
        self._validate()
        info, device = self.info, self.device
        student_cfg = self.student_cfg()
        experts = load_or_train_experts(self.splits, student_cfg, spec, self.augment_cfg, device, self.cache,
                                        progress=o.progress)
        m, min_start, max_start = o.expert_epochs, o.min_start_epoch, o.max_start_epoch
        cur_max, expansion = o.window()
        keep = max_start - 1 + m + 1  # snapshots 0 .. max_start-1+M
        finals = experts[:, o.label_epoch].to(device)  # [X, P], for correct_real init and soft labels
        n_experts = experts.shape[0]
        buffer = experts[:, :keep].reshape(n_experts * keep, -1).to(device)  # [X*keep, P]
        del experts
        model = FlatModel(build_template(student_cfg, self.splits).to(device))

        images = self.init_images(model, finals).detach().clone()
        labels = self.init_labels(model, images, finals).detach().clone()
        soft = labels.is_floating_point()
        del finals
        state = _State(
            images=images, labels=labels, lr=torch.tensor(float(o.lr_teacher), device=device),
            ema=images.clone() if o.ema_decay is not None else None,
            opt={"images": MomentumSGD(o.lr_img, o.momentum_img), "lr": MomentumSGD(o.lr_lr, o.momentum_lr)},
        )
        if soft:
            state.opt["labels"] = MomentumSGD(o.lr_y, o.momentum_y)
        iterations = o.iterations
        expert_fp = {"data": data_fingerprint(self.splits), "spec": spec.recipe(), "n": n_experts, "model": student_cfg,
                     "layout": layout_digest(student_cfg, info)}
        ckpt = Checkpointer(self.cache, self.checkpoint_key(expert_fp), o.checkpoint_every, o.resume, self.generator)
        start_it, found = ckpt.load(state.tensors(), state.opt, iterations)
        perm = found["perm"].to(device) if "perm" in found else None

        n_syn = len(state.images)
        batch_syn = int(o.batch_syn or n_syn)
        steps = o.syn_steps
        dsa = self.make_augment()
        unroll = unroll_recompute if o.unroll == "recompute" else unroll_plain
        guard = DivergenceGuard(state.tensors(), o.guard_every)
        loss_sum = torch.zeros((), device=device)
        loss = torch.zeros((), device=device)

        bar = tqdm(range(start_it, iterations), desc=self.name, disable=not o.progress, initial=start_it,
                   total=iterations)
        for it in bar:
            if perm is None or it % n_experts == 0:
                perm = torch.randperm(n_experts, generator=self.generator, device=device)
            t = sample_start_epoch(it, min_start, max_start, (cur_max, expansion), self.generator)
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
            mask = None if o.threshold is None else loss.detach() <= float(o.threshold)
            state.opt["images"].step(state.images, grads[0], mask)
            state.opt["lr"].step(state.lr, grads[1], mask)
            if soft:
                state.opt["labels"].step(state.labels, grads[2], mask)
            if state.ema is not None:
                state.ema.mul_(float(o.ema_decay)).add_(state.images, alpha=1.0 - float(o.ema_decay))

            ok = DivergenceGuard.finite(state.images, state.lr, state.labels if soft else None, state.ema)
            guard.update(it, state.tensors(), ok & (state.lr > 0))
            loss_sum += loss.detach()

            done = it + 1
            if guard.due(done, iterations) or ckpt.due(done, iterations):
                first_bad = guard.first_bad()
                if first_bad is not None:
                    self._diverged(first_bad, guard.good, soft)
            if o.log_every and done % o.log_every == 0:
                mean = float(loss_sum) / o.log_every
                loss_sum.zero_()
                log.info("%s iteration %d/%d: matching loss %.4f, lr %.3g", self.name, done, iterations, mean,
                         float(state.lr))
                bar.set_postfix(loss=f"{mean:.4f}")
            if ckpt.due(done, iterations):
                ckpt.save(done, {**state.tensors(), "perm": perm}, state.opt)
        bar.close()
        ckpt.clear()
        images_out = state.ema if state.ema is not None else state.images
        meta = {"final_loss": float(loss.detach()), "learned_lr": float(state.lr), "iterations": iterations,
                "num_experts": n_experts, "expert_recipe": spec.recipe(), "unroll": o.unroll,
                "resumed_seconds": ckpt.prior_seconds}
        if state.ema is not None:
            meta["ema_decay"] = float(o.ema_decay)
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
