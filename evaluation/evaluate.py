"""Evaluate a synthetic set under a protocol, for every architecture the protocol names."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ddbench.augment import DSA
from ddbench.data import Splits
from ddbench.evaluation.networks import NetworkBatch
from ddbench.evaluation.protocol import EvalProtocol
from ddbench.evaluation.trainer import test_accuracy, train_networks
from ddbench.utils import DDBenchError, make_generator, stable_hash

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    model: str
    seeds: list[int]
    accuracies: list[float]
    seconds: float
    lr: float
    label_type: str

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.accuracies).mean())

    @property
    def std(self) -> float:
        return float(torch.tensor(self.accuracies).std(unbiased=False))


def evaluate_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    splits: Splits,
    protocol: EvalProtocol,
    learned_lr: torch.Tensor | None = None,
    progress: bool = False,
) -> list[EvalResult]:
    """Train num_seeds fresh networks per architecture on (images [N,C,H,W], labels [N] or [N,K]) and test them.

    The learning rate is the artifact's learned lr when the protocol allows it, else protocol.lr.
    """
    device = splits.train.images.device
    images, labels = images.to(device), labels.to(device)
    lr = protocol.lr
    if learned_lr is not None and protocol.learned_lr:
        lr = float(learned_lr)
        if not (lr > 0 and lr < float("inf")):
            raise DDBenchError(f"the artifact's learned lr is {lr}; it must be a positive finite number. "
                               "Re-distill, or evaluate with eval.learned_lr=false to use eval.lr.")
    augment = DSA() if protocol.augment == "dsa" else None
    label_type = "hard" if labels.dtype == torch.int64 else "soft"
    results = []
    for name in protocol.models:
        start = time.perf_counter()
        nets = NetworkBatch(name, splits.info, protocol.seeds, device, vmap=protocol.vmap, **protocol.model_kwargs.get(name, {}))
        generator = make_generator(int(stable_hash([name, protocol.seeds], 8), 16), device)
        train_networks(
            nets, images, labels,
            epochs=protocol.train_epochs, lr=lr, batch_size=protocol.batch_size, generator=generator,
            momentum=protocol.momentum, weight_decay=protocol.weight_decay,
            lr_decay_at=protocol.lr_decay_at, lr_decay_factor=protocol.lr_decay_factor,
            augment=augment, progress=progress,
        )
        if not bool(nets.all_finite()):
            raise DDBenchError(f"evaluation of {name} diverged (non-finite weights) with lr={lr}; "
                               "no record is written. Lower eval.lr or check the synthetic set.")
        accuracies = test_accuracy(nets, splits.test, protocol.test_batch_size).tolist()
        result = EvalResult(name, protocol.seeds, accuracies, time.perf_counter() - start, lr, label_type)
        log.info("eval %s: %.2f ± %.2f %% over %d seeds (%.1f s)", name, 100 * result.mean, 100 * result.std,
                 len(accuracies), result.seconds)
        results.append(result)
    return results
