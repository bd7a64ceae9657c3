"""Feature embeddings of the real training set from a briefly trained network (cached)."""

from __future__ import annotations

from typing import Any

import torch

from ddbench.cache import Cache
from ddbench.data import Splits
from ddbench.training.networks import NetworkBatch, layout_digest
from ddbench.training.recipe import TrainRecipe
from ddbench.training.trainer import train
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


def embedding_recipe(epochs: int) -> TrainRecipe:
    """The embedding network's recipe: SGD 0.01 (momentum 0.9, wd 5e-4), batch 256, constant lr, no augmentation."""
    return TrainRecipe(epochs=epochs, batch_size=256, lr=0.01, schedule="constant", augment="none")


def train_embeddings(
    splits: Splits, model_cfg: dict[str, Any], epochs: int, seed: int, device: torch.device, cache: Cache
) -> torch.Tensor:
    """Penultimate features [N_train, D] of a network trained `epochs` epochs on the real train split."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    recipe = embedding_recipe(epochs)
    key = {"data": data_fingerprint(splits), "model": model_cfg, "layout": layout_digest(model_cfg, splits.info),
           "seed": seed, "recipe": recipe.to_dict()}

    def build() -> dict[str, torch.Tensor]:
        nets = NetworkBatch(model_cfg["name"], splits.info, [seed], device, vmap=False, **kwargs)
        train(nets, splits.train.images, splits.train.labels, recipe, make_generator(seed, device))
        return {"features": embed_all(nets.models[0], splits.train.images)}

    return cache.get_or_create("embeddings", key, build, required=("features",))["features"].to(device)
