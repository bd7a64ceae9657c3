"""Lock-step SGD training of S networks on one (synthetic or real) set, and their test accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddbench.augment import DSA
from ddbench.data import ClassTensors
from ddbench.training.networks import NetworkBatch


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over networks of each network's mean loss. logits [S,B,K]; targets [S,B] hard or [S,B,K] soft logits.

    Soft targets use the soft cross-entropy on softmax(targets) (temperature 1).
    """
    batch = logits.shape[1]
    if targets.dtype == torch.int64:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="sum") / batch
    soft = targets.softmax(-1)
    return -(soft * logits.log_softmax(-1)).sum() / batch


def train_networks(
    nets: NetworkBatch,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_decay_at: float = 0.5,
    lr_decay_factor: float = 0.1,
    augment: DSA | None = None,
    progress: bool = False,
) -> None:
    """Train every network of `nets` for `epochs` on images [N,C,H,W] with targets [N] (int64) or [N,K].

    images may also be [S,N,C,H,W] with targets [S,N] or [S,N,K]: one set per network (e.g. one random real
    subset per seed). Each network draws its own data order and its own augmentation every step (DSA groups =
    networks); the last partial batch is kept. No host synchronisation happens inside the loop.
    """
    per_net = images.dim() == 5
    n_nets, n = len(nets), (images.shape[1] if per_net else len(images))
    net_index = torch.arange(n_nets, device=images.device)[:, None]
    steps = math.ceil(n / batch_size)
    decay_epoch = int(epochs * lr_decay_at) if lr_decay_factor != 1 else -1
    nets.train(True)
    params = nets.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for epoch in tqdm(range(epochs), desc=f"train {nets.name}", disable=not progress, leave=False):
        if epoch == decay_epoch:
            lr *= lr_decay_factor
            optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        order = torch.rand(n_nets, n, device=images.device, generator=generator).argsort(dim=1)
        for step in range(steps):
            rows = order[:, step * batch_size : (step + 1) * batch_size]  # [S,B]
            x = images[net_index, rows] if per_net else images[rows]
            if augment is not None:
                x = augment(x.flatten(0, 1), generator, groups=n_nets).view_as(x)
            loss = classification_loss(nets(x), targets[net_index, rows] if per_net else targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def test_accuracy(nets: NetworkBatch, test: ClassTensors, batch_size: int = 1024) -> torch.Tensor:
    """Top-1 accuracy of every network on the whole split, as fractions [S]."""
    nets.train(False)
    correct = torch.zeros(len(nets), device=test.images.device)
    for start in range(0, len(test), batch_size):
        x = test.images[start : start + batch_size]
        logits = nets(x.unsqueeze(0).expand(len(nets), *x.shape))
        correct += (logits.argmax(-1) == test.labels[start : start + batch_size]).sum(-1)
    return correct / len(test)
