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
from typing import Any, Callable

import torch

from ddbench.cache import Busy, Cache
from ddbench.data import ClassTensors, Splits
from ddbench.training.networks import NetworkBatch, compile_wanted
from ddbench.training.recipe import TrainRecipe
from ddbench.training.trainer import test_accuracy, train
from ddbench.evaluation.protocol import EvalProtocol
from ddbench.evaluation.scores import seed_scores
from ddbench.evaluation.selection import best_lr, holdout_split
from ddbench.training.teacher import Teacher, load_teacher
from ddbench.training.checkpoint import Checkpointer
from ddbench.utils import DDBenchError, code_fingerprint, make_generator, mean_std, stable_hash, tensor_digest

log = logging.getLogger(__name__)
FITS = "fits"  # cache kind of finished training runs' results
FIT_RESULT = ("accuracies", "finite", "seconds")
# label source (other than 'artifact') → label mode: what the networks train on, whatever the artifact holds
SOURCE_MODES = {"hard": "hard", "stored": "stored", "static": "stored", "teacher": "teacher"}
TEACHER_SLACK = 0.02  # a teacher this far (fraction) below the whole-data accuracy of its architecture is warned of


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
    teacher: dict[str, Any] | None = None  # {models, test_accuracy, train_accuracy} when a teacher made the targets
    batch_size: int | None = None  # the training batch the networks used
    score_seconds: float = 0.0  # training seconds of the runs behind `scores` (see Evaluator.scores)

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

    def __init__(self, splits: Splits, protocol: EvalProtocol, cache: Cache | None = None, progress: bool = False,
                 helper: bool = False):
        self.splits = splits
        self.protocol = protocol.for_data(splits.info)  # crop padding and flip 'auto' follow the dataset
        self.cache = cache or Cache()
        self.progress = progress
        self.device = splits.train.images.device
        self._teacher: Teacher | None = None
        self._val: tuple[ClassTensors, ClassTensors] | None = None
        self.helper = helper  # a helper process skips runs that another process is running (see `help`)
        self.fit_seconds = 0.0  # training time of the runs so far; a resumed or reused run counts all its time

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

    def teacher_key(self, bn: str = "eval") -> dict[str, Any]:
        """What determines the protocol's teacher (its recipe, models and seed) and, for bn='train', the BatchNorm
        mode it relabels batches in (teacher_bn), for cache keys."""
        t = self.protocol.teacher
        key = t.recipe().to_dict() | {"models": t.models, "model_kwargs": t.model_kwargs, "seed": t.seed}
        return (key | {"bn": bn}) if bn != "eval" else key

    def relabeller(self, protocol: EvalProtocol) -> Teacher:
        """The online teacher of `protocol` (label_source=teacher): the teacher in BatchNorm mode teacher_bn."""
        return self.teacher.with_bn(protocol.teacher_bn)

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
        return SOURCE_MODES[source]

    def targets(self, mode: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The training targets of `mode` for images [...,C,H,W] with labels [...] (hard) or [...,K] (logits)."""
        soft = labels.is_floating_point()
        if mode == "hard":
            return labels.argmax(-1) if soft else labels
        if mode == "stored":
            return labels if soft else self.teacher.logits(images)
        return None

    def fit(self, protocol: EvalProtocol, name: str, images: torch.Tensor, targets: torch.Tensor | None,
            mode: str, lr: float, generator: torch.Generator, split: str = "test", check: bool = True
            ) -> list[float] | None:
        """Per-seed accuracy on `split` ('test', or 'val': the held-out part of train) of fresh networks for
        protocol.seeds trained on (images, targets). Diverged networks (non-finite weights) raise with check=True
        and give None with check=False.

        With protocol.checkpoint_minutes > 0 the run saves checkpoints as it goes, and its result is kept in the
        cache (kind "fits", with the seconds it took) under everything that determines it: a resumed evaluation,
        a rerun or a helper process (see `help`) never trains the same networks twice. A helper gets `Busy` for a
        run another process is training; everyone else waits for that run and takes its result.
        """
        recipe = protocol.recipe(lr)
        steps = recipe.epochs * math.ceil(images.shape[-4] / recipe.batch_size)
        compiled = compile_wanted(protocol.compile, self.device, steps)
        kwargs = protocol.model_kwargs.get(name, {})
        nets = NetworkBatch(name, self.splits.info, protocol.seeds, self.device, vmap=protocol.vmap, compile=compiled,
                            **kwargs)
        if protocol.checkpoint_minutes <= 0:
            return self._train_and_test(protocol, nets, images, targets, mode, recipe, generator, split, check, None)
        key = {"what": "eval_fit", "code": code_fingerprint(), "torch": torch.__version__,
               "device": self.device.type, "model": name, "model_kwargs": kwargs, "seeds": protocol.seeds,
               "recipe": recipe.to_dict(), "mode": mode, "images": tensor_digest(images),
               "targets": None if targets is None else tensor_digest(targets),
               "generator": tensor_digest(generator.get_state()), "vmap": nets.vmapped, "compile": compiled,
               "teacher": self.teacher_key(protocol.teacher_bn) if mode == "teacher" else None}
        result_key = key | {"split": split}
        found = self.cache.load(FITS, result_key, required=FIT_RESULT)
        if found is None:
            with self.cache.building(FITS, result_key, wait=not self.helper):
                found = self.cache.load(FITS, result_key, required=FIT_RESULT)  # trained by another process
                if found is None:
                    checkpoint = Checkpointer(self.cache, key, every=1, resume="auto", generator=generator,
                                              every_seconds=60 * protocol.checkpoint_minutes, unit="epoch",
                                              label=f"training {name} on {images.shape[-4]} images with {mode} labels "
                                                    f"({len(protocol.seeds)} seeds)")
                    return self._train_and_test(protocol, nets, images, targets, mode, recipe, generator, split,
                                                check, checkpoint, result_key)
        self.fit_seconds += float(found["seconds"])
        return self._checked(name, lr, bool(found["finite"]), found["accuracies"].tolist(), check)

    def _train_and_test(self, protocol: EvalProtocol, nets: NetworkBatch, images: torch.Tensor,
                        targets: torch.Tensor | None, mode: str, recipe: TrainRecipe, generator: torch.Generator,
                        split: str, check: bool, checkpoint: Checkpointer | None,
                        result_key: dict[str, Any] | None = None) -> list[float] | None:
        start = time.perf_counter()
        teacher = self.relabeller(protocol) if mode == "teacher" else None
        train(nets, images, targets, recipe, generator, teacher=teacher, progress=self.progress, checkpoint=checkpoint)
        finite = bool(nets.all_finite())
        data = self.val_split()[1] if split == "val" else self.splits.test  # the only place test images are read
        accuracies = test_accuracy(nets, data, protocol.test_batch_size).tolist()
        seconds = time.perf_counter() - start + (checkpoint.prior_seconds if checkpoint is not None else 0.0)
        self.fit_seconds += seconds
        if result_key is not None:
            self.cache.save(FITS, result_key, {"accuracies": torch.tensor(accuracies), "finite": torch.tensor(finite),
                                               "seconds": torch.tensor(seconds, dtype=torch.float64)})
        return self._checked(nets.name, recipe.lr, finite, accuracies, check)

    @staticmethod
    def _checked(name: str, lr: float, finite: bool, accuracies: list[float], check: bool) -> list[float] | None:
        if finite:
            return accuracies
        if check:
            raise DDBenchError(f"evaluation of {name} diverged (non-finite weights) with lr={lr}; "
                               "no record is written. Lower eval.lr or check the synthetic set.")
        return None

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
        val_acc = []
        for lr in protocol.lr_grid:
            accuracies = self.fit(protocol, name, images, targets, mode, lr,
                                  _generator(["lr_grid", name, protocol.seeds, lr], self.device), split="val",
                                  check=False)
            val_acc.append(-1.0 if accuracies is None else sum(accuracies) / len(accuracies))
        lr = best_lr(protocol.lr_grid, val_acc)
        log.info("lr of %s chosen on the validation split (%d images): %g (val accuracy %s)", name,
                 len(self.val_split()[1]), lr,
                 ", ".join(f"{g:g}: {100 * a:.1f} %" for g, a in zip(protocol.lr_grid, val_acc)))
        return lr, "grid"

    # ------------------------------------------------------------------------------------ baselines
    def full_data_accuracy(self, name: str) -> list[float]:
        """Per-seed test accuracy of `name` trained on the whole real train set with hard labels (cached)."""
        return self.full_data_run(name)[0]

    def full_data_run(self, name: str) -> tuple[list[float], float | None]:
        """`full_data_accuracy` and the seconds its training took, stored with it so that a reference row read
        from the cache still says what it cost (None for an entry cached before they were stored)."""
        base = self.protocol.hard_variant()
        fd = self.protocol.full_data
        proto = replace(base, epochs=fd.epochs, epochs_no_aug=fd.epochs, batch_size=fd.batch_size, lr_grid=None)
        lr = fd.lr if fd.lr is not None else self.protocol.lr
        key = {"what": "full_hard", "code": code_fingerprint(), "data": self.fingerprint(), "model": name,
               "model_kwargs": proto.model_kwargs.get(name, {}), "recipe": proto.recipe_key(), "lr": lr,
               "seeds": proto.seeds}

        def build() -> dict[str, torch.Tensor]:
            train, before = self.splits.train, self.fit_seconds
            accuracies = self.fit(proto, name, train.images, train.labels, "hard", lr,
                                  _generator(["full_hard", name, proto.seeds], self.device))
            return {"accuracies": torch.tensor(accuracies),
                    "seconds": torch.tensor(self.fit_seconds - before, dtype=torch.float64)}

        found = self.cache.get_or_create("baselines", key, build, required=("accuracies",), wait=not self.helper)
        return found["accuracies"].tolist(), float(found["seconds"]) if "seconds" in found else None

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
            "what": "random", "code": code_fingerprint(), "data": self.fingerprint(), "model": name,
            "model_kwargs": protocol.model_kwargs.get(name, {}), "recipe": protocol.recipe_key(), "mode": mode,
            "ipc": ipc, "seeds": protocol.seeds,
            "lr": {"grid": protocol.lr_grid, "val": [protocol.val_fraction, protocol.val_seed]} if grid else lr,
        }
        if mode != "hard":
            key["teacher"] = self.teacher_key(protocol.teacher_bn if mode == "teacher" else "eval")

        def build() -> dict[str, torch.Tensor]:
            source = self.val_split()[0] if grid else self.splits.train
            images, labels = self.random_subsets(ipc, protocol.seeds, source)
            targets = self.targets(mode, images, labels)
            chosen = self.choose_lr(protocol, name, images, targets, mode)[0] if grid else lr
            return {"accuracies": torch.tensor(self.fit(protocol, name, images, targets, mode, chosen,
                                                        _generator(["random", name, protocol.seeds, ipc], self.device)))}

        return self.cache.get_or_create("baselines", key, build, required=("accuracies",),
                                        wait=not self.helper)["accuracies"].tolist()

    def score_parts(self, name: str, images: torch.Tensor, labels: torch.Tensor, mode: str, lr: float,
                    lr_source: str, ipc: int) -> dict[str, Callable[[], list[float]]]:
        """The runs behind the protocol's fair scores for `name`: part name → a call returning per-seed accuracy
        (syn_hard is left out when the evaluation itself is the hard-label run)."""
        p = self.protocol
        wanted = set(p.scores)
        parts: dict[str, Callable[[], list[float]]] = {}
        if wanted & {"hlr", "lrs"}:
            if not (mode == "hard" and not (p.mixup or p.cutmix)):
                def syn_hard() -> list[float]:
                    hard = p.hard_variant()
                    hard_targets = self.targets("hard", images, labels)
                    hard_lr = self.choose_lr(hard, name, images, hard_targets, "hard")[0] if lr_source == "grid" else lr
                    return self.fit(hard, name, images, hard_targets, "hard", hard_lr,
                                    _generator(["syn_hard", name, p.seeds], self.device))
                parts["syn_hard"] = syn_hard
            parts["full_hard"] = lambda: self.full_data_accuracy(name)
        if wanted & {"ior", "lrs", "ars"}:
            parts["random"] = lambda: self.random_accuracy(name, p, mode, ipc)
        if "ars" in wanted:
            plain = p.without_augmentation()

            def syn_noaug() -> list[float]:
                targets = self.targets(mode, images, labels)
                plain_lr = self.choose_lr(plain, name, images, targets, mode)[0] if lr_source == "grid" else lr
                return self.fit(plain, name, images, targets, mode, plain_lr,
                                _generator(["syn_noaug", name, p.seeds], self.device))
            parts["syn_noaug"] = syn_noaug
            parts["random_noaug"] = lambda: self.random_accuracy(name, plain, mode, ipc)
        return parts

    def scores(self, name: str, images: torch.Tensor, labels: torch.Tensor, mode: str, lr: float, lr_source: str,
               syn: list[float], ipc: int) -> tuple[dict[str, float], float]:
        """(the protocol's fair scores of `name`, the training seconds of the runs behind them). The seconds count
        the runs of this set (syn_hard, syn_noaug) and the random-subset baselines this call trained; not the
        whole-dataset run, which is the reference row's and reports its own, nor a baseline another run had cached
        already (it was counted there)."""
        p = self.protocol
        parts, seconds = {}, 0.0
        for part, run in self.score_parts(name, images, labels, mode, lr, lr_source, ipc).items():
            before = self.fit_seconds
            parts[part] = run()
            if part != "full_hard":
                seconds += self.fit_seconds - before
        if {"hlr", "lrs"} & set(p.scores):
            parts.setdefault("syn_hard", syn)  # the run itself is the hard-label run
        return seed_scores(p.scores, syn=syn, weight=p.score_weight, ars_weight=p.ars_weight, **parts), seconds

    # ----------------------------------------------------------------------------------- evaluation
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, learned_lr: torch.Tensor | None,
                 ipc: int) -> list[EvalResult]:
        """One result per architecture of the protocol (see `evaluate_synthetic`)."""
        self.protocol = self.protocol.sized_for(images.shape[-4], len(self.splits.train))
        protocol = self.protocol
        mode = self.label_mode(protocol, labels)
        targets = self.targets(mode, images, labels)
        label_type = "hard" if mode == "hard" else "soft"
        results = []
        uses_teacher = mode == "teacher" or (mode == "stored" and not labels.is_floating_point())
        agreement = None  # the same for every architecture: one teacher, one set
        if uses_teacher and not labels.is_floating_point():
            agreement = self.teacher_agreement(images, labels)
            log.info("teacher agreement: the teacher's top class is the set's label for %.1f %% of its images",
                     100 * agreement)
        for name in protocol.models:
            before = self.fit_seconds
            lr, lr_source = self.choose_lr(protocol, name, images, targets, mode, learned_lr)
            accuracies = self.fit(protocol, name, images, targets, mode, lr, self.main_generator(name))
            seconds = self.fit_seconds - before
            teacher = self.teacher_summary(protocol, mode) if uses_teacher else None
            result = EvalResult(name, protocol.seeds, accuracies, seconds, lr, label_type, protocol=protocol.name,
                                lr_source=lr_source, teacher=teacher, batch_size=protocol.batch_size)
            log.info("eval %s (%s, %s labels): %.2f ± %.2f %% over %d seeds (%.1f s)", name, protocol.name, label_type,
                     100 * result.mean, 100 * result.std, len(accuracies), seconds)
            if protocol.scores:
                result.scores, result.score_seconds = self.scores(name, images, labels, mode, lr, lr_source,
                                                                  accuracies, ipc)
                log.info("scores %s: %s (%.1f s of training)", name, ", ".join(
                    f"{k} {result.scores[k]:.4f}" for k in protocol.scores), result.score_seconds)
            if agreement is not None:
                result.scores["teacher_agreement"] = agreement
            if uses_teacher:
                self.warn_weak_teacher(name, result.scores.get("acc_full_hard"))
            results.append(result)
        return results

    def teacher_summary(self, protocol: EvalProtocol, mode: str) -> dict[str, Any]:
        """The record's `teacher` of a run in label mode `mode` (its BatchNorm mode when it relabels online)."""
        return (self.relabeller(protocol) if mode == "teacher" else self.teacher).summary()

    def teacher_agreement(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """The share of a set's images [...,C,H,W] (as stored, not augmented) whose top class under the protocol's
        teacher (BatchNorm in eval mode) is their label [...]: low agreement means the teacher reads the images as
        other classes, so its soft labels carry less of the class the set meant (the record's
        `scores.teacher_agreement`)."""
        return float((self.teacher.logits(images).argmax(-1) == labels).float().mean())

    def warn_weak_teacher(self, name: str, whole_data: float | None) -> None:
        """One warning when the teacher's test accuracy is more than TEACHER_SLACK below what `name` reaches
        trained on the whole real train set under this protocol (its HLR reference), for a one-model teacher of
        that architecture: students follow their teacher, so it would cap the soft-label row."""
        teacher = self.teacher
        if whole_data is None or teacher.test_accuracy is None or teacher.names != [name]:
            return
        if teacher.test_accuracy < whole_data - TEACHER_SLACK:
            t = self.protocol.teacher
            log.warning("the teacher %s reaches %.2f %% on the test set, %.2f points below %s trained on the whole "
                        "train set (%.2f %%): its soft labels cap the students. Likely causes: its augmentation "
                        "(flip=%s, crop_padding=%s; %s mirror-safe) or too few epochs (%d).", name,
                        100 * teacher.test_accuracy, 100 * (whole_data - teacher.test_accuracy), name,
                        100 * whole_data, t.flip, t.crop_padding,
                        "the data is" if self.splits.info.mirror_safe else "the data is not", t.epochs)

    def main_generator(self, name: str) -> torch.Generator:
        return make_generator(int(stable_hash([name, self.protocol.seeds], 8), 16), self.device)

    # ------------------------------------------------------------------------------ helper processes
    def attempt(self, what: str, work: Callable[[], Any]) -> None:
        """Run `work` unless another process is already running a training run it needs (a helper moves on)."""
        try:
            work()
        except Busy:
            log.info("helper: %s is being run by another process; moving on", what)

    def help_baselines(self, ipc: int) -> None:
        """A helper's work before the distilled set exists: the score baselines that do not depend on it."""
        p = self.protocol
        mode = SOURCE_MODES.get(p.label_source)  # None ('artifact'): it depends on the set's labels
        for name in reversed(p.models):
            if {"hlr", "lrs"} & set(p.scores):
                self.attempt(f"the full-data run of {name}", lambda: self.full_data_accuracy(name))
            if mode is not None and {"ior", "lrs", "ars"} & set(p.scores):
                self.attempt(f"the random-subset run of {name}", lambda: self.random_accuracy(name, p, mode, ipc))

    def help(self, images: torch.Tensor, labels: torch.Tensor, learned_lr: torch.Tensor | None, ipc: int) -> None:
        """A helper's share of `evaluate`: the same training runs in reverse order (last architecture first, its
        score runs before its evaluation), skipping those another process is running; results go to the cache,
        where the main process finds them. Returns when no run is left that nobody holds."""
        self.protocol = self.protocol.sized_for(images.shape[-4], len(self.splits.train))
        protocol = self.protocol
        mode = self.label_mode(protocol, labels)
        targets = self.targets(mode, images, labels)
        for name in reversed(protocol.models):
            chosen: list[tuple[float, str]] = []
            self.attempt(f"the lr choice of {name}",
                         lambda: chosen.append(self.choose_lr(protocol, name, images, targets, mode, learned_lr)))
            if not chosen:
                continue
            lr, source = chosen[0]
            for part, run in reversed(self.score_parts(name, images, labels, mode, lr, source, ipc).items()):
                self.attempt(f"the {part} run of {name}", run)
            self.attempt(f"the evaluation of {name}",
                         lambda: self.fit(protocol, name, images, targets, mode, lr, self.main_generator(name)))


TEACHER_SOURCES = ("teacher", "static")  # label sources whose protocol has a teacher


@dataclass
class ReferenceResult:
    """A reference row of a protocol: `whole_dataset` (eval model `model` trained on the whole real train set with
    hard labels: the full-data run of HLR, per seed) or `teacher` (the protocol's teacher: one test accuracy)."""

    kind: str  # whole_dataset | teacher
    model: str
    seeds: list[int]
    accuracies: list[float]
    seconds: float
    teacher: dict[str, Any] | None = None


def reference_results(splits: Splits, protocol: EvalProtocol, cache: Cache | None = None,
                      progress: bool = False) -> list[ReferenceResult]:
    """The reference rows a table of `protocol` prints beside its methods: the whole-dataset accuracy of every
    evaluation model (the cached full-data baseline of HLR: hard labels, the protocol's augmentation,
    `full_data` epochs/batch/lr) and, for protocols with a teacher, the teacher's test accuracy."""
    evaluator = Evaluator(splits, protocol, cache, progress)
    out = []
    for name in evaluator.protocol.models:
        start = time.perf_counter()
        accuracies, seconds = evaluator.full_data_run(name)
        seconds = time.perf_counter() - start if seconds is None else seconds
        out.append(ReferenceResult("whole_dataset", name, evaluator.protocol.seeds, accuracies, seconds))
        log.info("whole dataset, %s (%s): %.2f ± %.2f %%", name, protocol.name, *[100 * v for v in mean_std(accuracies)])
    if protocol.label_source in TEACHER_SOURCES:
        start = time.perf_counter()
        teacher = evaluator.teacher
        summary = teacher.summary()
        if teacher.test_accuracy is not None:
            out.append(ReferenceResult("teacher", "+".join(teacher.names), [evaluator.protocol.teacher.seed],
                                       [float(teacher.test_accuracy)], time.perf_counter() - start, summary))
            log.info("teacher %s (%s): %.2f %% on the test set", "+".join(teacher.names), protocol.name,
                     100 * teacher.test_accuracy)
    return out


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
    checkpoints and results of long training runs (default: the user's cache folder); `ipc` is the storage budget
    the random-subset baseline gets (default len(images) // num_classes). A result's seconds are the training time
    of its lr choice and evaluation (with the time of earlier, interrupted or reused parts).
    """
    device = splits.train.images.device
    images, labels = images.to(device), labels.to(device)
    ipc = int(ipc or max(1, len(images) // splits.info.num_classes))
    return Evaluator(splits, protocol, cache, progress).evaluate(images, labels, learned_lr, ipc)
