"""Feature embeddings of the real training set from a briefly trained network (cached)."""

from __future__ import annotations

from typing import Any

import torch

from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.training.networks import NetworkBatch
from ddbench.training.trainer import train_networks
from ddbench.utils import make_generator


def data_fingerprint(splits: Splits) -> dict[str, Any]:
    """What identifies the training split a product was computed from."""
    train = splits.train
    return {
        "dataset": splits.info.name,
        "shape": list(train.images.shape),
        "zca": splits.zca is not None,
        "checksum": round(float(train.images.double().sum()), 3),
    }


@torch.no_grad()
def embed_all(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def train_embeddings(
    splits: Splits, model_cfg: dict[str, Any], epochs: int, seed: int, device: torch.device, cache: Cache
) -> torch.Tensor:
    """Penultimate features [N_train, D] of a network trained `epochs` epochs on the real train split."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    key = {"data": data_fingerprint(splits), "model": model_cfg, "epochs": epochs, "seed": seed, "recipe": "sgd0.01-bs256"}

    def build() -> dict[str, torch.Tensor]:
        nets = NetworkBatch(model_cfg["name"], splits.info, [seed], device, vmap=False, **kwargs)
        train_networks(
            nets, splits.train.images, splits.train.labels, epochs=epochs, lr=0.01, batch_size=256,
            generator=make_generator(seed, device), lr_decay_factor=1.0,
        )
        return {"features": embed_all(nets.models[0], splits.train.images)}

    return cache.get_or_create("embeddings", key, build)["features"].to(device)
