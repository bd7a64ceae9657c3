"""Evaluate a synthetic set under a protocol, for every architecture the protocol names.

Per architecture: choose the lr (the artifact's learned lr, the protocol's lr, or the best of `lr_grid` on a
validation split held out of train), train the seeds in lock-step, and test once, at the end. With
`scores`, also train the baselines of DD-Ranking's fair scores (full real data and random real subsets are
cached, so every method is compared with the same baselines).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ddbench.cache import Cache
from ddbench.data import ClassTensors, Splits
from ddbench.training.networks import NetworkBatch, compile_wanted
from ddbench.training.trainer import test_accuracy, train
from ddbench.evaluation.protocol import EvalProtocol
from ddbench.evaluation.scores import seed_scores
from ddbench.evaluation.selection import best_lr, holdout_split
from ddbench.training.teacher import Teacher, load_teacher
from ddbench.training.checkpoint import Checkpointer
from ddbench.utils import DDBenchError, code_fingerprint, make_generator, mean_std, stable_hash, tensor_digest

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    model: str
    seeds: list[int]
    accuracies: list[float]
    seconds: float
    lr: float
    label_type: str
    scores: dict[str, float] = field(default_factory=dict)
    protocol: str = "dc"
    lr_source: str = "protocol"  # learned | grid | protocol

    @property
    def mean(self) -> float:
        return mean_std(self.accuracies)[0]

    @property
    def std(self) -> float:
        return mean_std(self.accuracies)[1]


def _generator(parts: list[Any], device: torch.device) -> torch.Generator:
    return make_generator(int(stable_hash(parts, 8), 16), device)


class Evaluator:
    """Trains networks under a protocol on a split's device; holds the lazily built teacher and validation split.

    Label modes: 'hard' (int64 labels, cross-entropy), 'stored' (float logits: the artifact's, or a teacher's
    static logits), 'teacher' (an online teacher relabels every augmented batch; kind kd only).
    """

    def __init__(self, splits: Splits, protocol: EvalProtocol, cache: Cache | None = None, progress: bool = False):
        self.splits = splits
        self.protocol = protocol
        self.cache = cache or Cache()
        self.progress = progress
        self.device = splits.train.images.device
        self._teacher: Teacher | None = None
        self._val: tuple[ClassTensors, ClassTensors] | None = None
        self.resumed_seconds = 0.0  # seconds of earlier, interrupted parts of the fits resumed from checkpoints

    # ------------------------------------------------------------------------------------- pieces
    @property
    def teacher(self) -> Teacher:
        if self._teacher is None:
            self._teacher = load_teacher(self.protocol.teacher, self.splits, self.device, self.cache, self.progress)
        return self._teacher

    def val_split(self) -> tuple[ClassTensors, ClassTensors]:
        """(train without val, val): the held-out split every choice is made on."""
        if self._val is None:
            self._val = holdout_split(self.splits.train, self.protocol.val_fraction, self.protocol.val_seed)
        return self._val

    def teacher_key(self) -> dict[str, Any]:
        """What determines the protocol's teacher (its recipe, models and seed), for cache keys."""
        t = self.protocol.teacher
        return t.recipe().to_dict() | {"models": t.models, "model_kwargs": t.model_kwargs, "seed": t.seed}

    def fingerprint(self) -> dict[str, Any]:
        from ddbench.training.embedding import data_fingerprint

        return data_fingerprint(self.splits)

    @staticmethod
    def label_mode(protocol: EvalProtocol, labels: torch.Tensor) -> str:
        soft = labels.is_floating_point()
        source = protocol.label_source  # kind dc allows only 'artifact' and 'hard'
        if source == "artifact":
            return "stored" if soft else "hard"
        if source == "stored" and not soft:
            raise DDBenchError(
                f"protocol {protocol.name!r} trains on the artifact's stored soft labels, but this artifact has hard "
                "labels; use eval.label_source=static (a teacher labels the images once) or =teacher.")
        return {"hard": "hard", "stored": "stored", "static": "stored", "teacher": "teacher"}[source]

    def targets(self, mode: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The training targets of `mode` for images [...,C,H,W] with labels [...] (hard) or [...,K] (logits)."""
        soft = labels.is_floating_point()
        if mode == "hard":
            return labels.argmax(-1) if soft else labels
        if mode == "stored":
            return labels if soft else self.teacher.logits(images)
        return None

    def fit(self, protocol: EvalProtocol, name: str, images: torch.Tensor, targets: torch.Tensor | None,
            mode: str, lr: float, generator: torch.Generator, check: bool = True) -> NetworkBatch:
        """Fresh networks for protocol.seeds trained on (images, targets); raises if they diverge (check=True)."""
        recipe = protocol.recipe(lr)
        steps = recipe.epochs * math.ceil(images.shape[-4] / recipe.batch_size)
        compiled = compile_wanted(protocol.compile, self.device, steps)
        kwargs = protocol.model_kwargs.get(name, {})
        nets = NetworkBatch(name, self.splits.info, protocol.seeds, self.device, vmap=protocol.vmap, compile=compiled,
                            **kwargs)
        teacher = self.teacher if mode == "teacher" else None
        checkpoint = None
        if protocol.checkpoint_minutes > 0:
            key = {"what": "eval_fit", "code": code_fingerprint(), "torch": torch.__version__,
                   "device": self.device.type, "model": name, "model_kwargs": kwargs, "seeds": protocol.seeds,
                   "recipe": recipe.to_dict(), "mode": mode, "images": tensor_digest(images),
                   "targets": None if targets is None else tensor_digest(targets),
                   "generator": tensor_digest(generator.get_state()), "vmap": nets.vmapped, "compile": compiled,
                   "teacher": self.teacher_key() if mode == "teacher" else None}
            checkpoint = Checkpointer(self.cache, key, every=1, resume="auto", generator=generator,
                                      every_seconds=60 * protocol.checkpoint_minutes)
        train(nets, images, targets, recipe, generator, teacher=teacher, progress=self.progress, checkpoint=checkpoint)
        if checkpoint is not None:
            self.resumed_seconds += checkpoint.prior_seconds
        if check and not bool(nets.all_finite()):
            raise DDBenchError(f"evaluation of {name} diverged (non-finite weights) with lr={lr}; "
                               "no record is written. Lower eval.lr or check the synthetic set.")
        return nets

    def choose_lr(self, protocol: EvalProtocol, name: str, images: torch.Tensor, targets: torch.Tensor | None,
                  mode: str, learned_lr: torch.Tensor | None = None) -> tuple[float, str]:
        """(lr, source): the learned lr if the protocol allows it, else the best of lr_grid on the validation
        split (the test split is not touched), else protocol.lr."""
        if learned_lr is not None and protocol.learned_lr:
            lr = float(learned_lr)
            if not (lr > 0 and lr < float("inf")):
                raise DDBenchError(f"the artifact's learned lr is {lr}; it must be a positive finite number. "
                                   "Re-distill, or evaluate with eval.learned_lr=false to use eval.lr.")
            return lr, "learned"
        if not protocol.lr_grid:
            return protocol.lr, "protocol"
        _, val = self.val_split()
        val_acc = []
        for lr in protocol.lr_grid:
            nets = self.fit(protocol, name, images, targets, mode, lr, _generator(["lr_grid", name, protocol.seeds, lr],
                                                                                  self.device), check=False)
            acc = -1.0
            if bool(nets.all_finite()):
                acc = float(test_accuracy(nets, val, protocol.test_batch_size).mean())
            val_acc.append(acc)
        lr = best_lr(protocol.lr_grid, val_acc)
        log.info("lr of %s chosen on the validation split (%d images): %g (val accuracy %s)", name, len(val), lr,
                 ", ".join(f"{g:g}: {100 * a:.1f} %" for g, a in zip(protocol.lr_grid, val_acc)))
        return lr, "grid"

    def accuracy(self, nets: NetworkBatch, protocol: EvalProtocol) -> list[float]:
        """Test accuracy per seed: the only place the test split is read."""
        return test_accuracy(nets, self.splits.test, protocol.test_batch_size).tolist()

    # ------------------------------------------------------------------------------------ baselines
    def full_data_accuracy(self, name: str) -> list[float]:
        """Per-seed test accuracy of `name` trained on the whole real train set with hard labels (cached)."""
        base = self.protocol.hard_variant()
        fd = self.protocol.full_data
        proto = replace(base, epochs=fd.epochs, epochs_no_aug=fd.epochs, batch_size=fd.batch_size, lr_grid=None)
        lr = fd.lr if fd.lr is not None else self.protocol.lr
        key = {"what": "full_hard", "data": self.fingerprint(), "model": name,
               "model_kwargs": proto.model_kwargs.get(name, {}), "recipe": proto.recipe_key(), "lr": lr,
               "seeds": proto.seeds}

        def build() -> dict[str, torch.Tensor]:
            train = self.splits.train
            nets = self.fit(proto, name, train.images, train.labels, "hard", lr,
                            _generator(["full_hard", name, proto.seeds], self.device))
            return {"accuracies": torch.tensor(self.accuracy(nets, proto))}

        return self.cache.get_or_create("baselines", key, build, required=("accuracies",))["accuracies"].tolist()

    def random_subsets(self, ipc: int, seeds: list[int], source: ClassTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """One random real subset of ipc images per class for each seed: images [S,ipc*K,C,H,W], labels [S,ipc*K]."""
        rows = torch.stack([
            source.sample_per_class(ipc, _generator(["random_subset", self.splits.info.name, ipc, s], self.device)).flatten()
            for s in seeds
        ])
        return source.images[rows], source.labels[rows]

    def random_accuracy(self, name: str, protocol: EvalProtocol, mode: str, ipc: int) -> list[float]:
        """Per-seed test accuracy of `name` trained on random real subsets with the same recipe (cached).

        The subsets get their own lr: the best of lr_grid on the validation split when the protocol has a grid,
        else the protocol's lr; never the distilled set's learned lr.
        """
        grid = bool(protocol.lr_grid)
        lr = protocol.lr
        key: dict[str, Any] = {
            "what": "random", "data": self.fingerprint(), "model": name,
            "model_kwargs": protocol.model_kwargs.get(name, {}), "recipe": protocol.recipe_key(), "mode": mode,
            "ipc": ipc, "seeds": protocol.seeds,
            "lr": {"grid": protocol.lr_grid, "val": [protocol.val_fraction, protocol.val_seed]} if grid else lr,
        }
        if mode != "hard":
            key["teacher"] = self.teacher_key()

        def build() -> dict[str, torch.Tensor]:
            source = self.val_split()[0] if grid else self.splits.train
            images, labels = self.random_subsets(ipc, protocol.seeds, source)
            targets = self.targets(mode, images, labels)
            chosen = self.choose_lr(protocol, name, images, targets, mode)[0] if grid else lr
            nets = self.fit(protocol, name, images, targets, mode, chosen,
                            _generator(["random", name, protocol.seeds, ipc], self.device))
            return {"accuracies": torch.tensor(self.accuracy(nets, protocol))}

        return self.cache.get_or_create("baselines", key, build, required=("accuracies",))["accuracies"].tolist()

    def scores(self, name: str, images: torch.Tensor, labels: torch.Tensor, mode: str, lr: float, lr_source: str,
               syn: list[float], ipc: int) -> dict[str, float]:
        p = self.protocol
        wanted = set(p.scores)
        parts: dict[str, list[float]] = {}
        if wanted & {"hlr", "lrs"}:
            if mode == "hard" and not (p.mixup or p.cutmix):
                parts["syn_hard"] = syn  # the run itself is the hard-label run
            else:
                hard = p.hard_variant()
                hard_targets = self.targets("hard", images, labels)
                hard_lr = self.choose_lr(hard, name, images, hard_targets, "hard")[0] if lr_source == "grid" else lr
                nets = self.fit(hard, name, images, hard_targets, "hard", hard_lr,
                                _generator(["syn_hard", name, p.seeds], self.device))
                parts["syn_hard"] = self.accuracy(nets, hard)
            parts["full_hard"] = self.full_data_accuracy(name)
        if wanted & {"ior", "lrs", "ars"}:
            parts["random"] = self.random_accuracy(name, p, mode, ipc)
        if "ars" in wanted:
            plain = p.without_augmentation()
            targets = self.targets(mode, images, labels)
            plain_lr = self.choose_lr(plain, name, images, targets, mode)[0] if lr_source == "grid" else lr
            nets = self.fit(plain, name, images, targets, mode, plain_lr,
                            _generator(["syn_noaug", name, p.seeds], self.device))
            parts["syn_noaug"] = self.accuracy(nets, plain)
            parts["random_noaug"] = self.random_accuracy(name, plain, mode, ipc)
        return seed_scores(p.scores, syn=syn, weight=p.score_weight, ars_weight=p.ars_weight, **parts)


def evaluate_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    splits: Splits,
    protocol: EvalProtocol,
    learned_lr: torch.Tensor | None = None,
    progress: bool = False,
    cache: Cache | None = None,
    ipc: int | None = None,
) -> list[EvalResult]:
    """Train num_seeds fresh networks per architecture on (images [N,C,H,W], labels [N] or [N,K]) and test them.

    The learning rate is the artifact's learned lr when the protocol allows it, else the best of
    protocol.lr_grid on a validation split, else protocol.lr. `cache` holds teachers, score baselines and the
    checkpoints of long training runs (default: the user's cache folder); `ipc` is the storage budget the random-subset baseline gets
    (default len(images) // num_classes).
    """
    device = splits.train.images.device
    images, labels = images.to(device), labels.to(device)
    ev = Evaluator(splits, protocol, cache, progress)
    mode = ev.label_mode(protocol, labels)
    targets = ev.targets(mode, images, labels)
    label_type = "hard" if mode == "hard" else "soft"
    ipc = int(ipc or max(1, len(images) // splits.info.num_classes))
    results = []
    for name in protocol.models:
        start = time.perf_counter()
        lr, lr_source = ev.choose_lr(protocol, name, images, targets, mode, learned_lr)
        generator = make_generator(int(stable_hash([name, protocol.seeds], 8), 16), device)
        resumed = ev.resumed_seconds
        nets = ev.fit(protocol, name, images, targets, mode, lr, generator)
        accuracies = ev.accuracy(nets, protocol)
        seconds = time.perf_counter() - start + ev.resumed_seconds - resumed
        result = EvalResult(name, protocol.seeds, accuracies, seconds, lr, label_type, protocol=protocol.name,
                            lr_source=lr_source)
        log.info("eval %s (%s, %s labels): %.2f ± %.2f %% over %d seeds (%.1f s)", name, protocol.name, label_type,
                 100 * result.mean, 100 * result.std, len(accuracies), seconds)
        if protocol.scores:
            start = time.perf_counter()
            result.scores = ev.scores(name, images, labels, mode, lr, lr_source, accuracies, ipc)
            log.info("scores %s: %s (%.1f s)", name, ", ".join(
                f"{k} {result.scores[k]:.4f}" for k in protocol.scores), time.perf_counter() - start)
        results.append(result)
    return results
