"""Coreset baselines: random real subset, herding and k-center greedy (per class, in an embedding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.options import MethodOptions, option
from ddbench.training.embedding import train_embeddings


@dataclass
class EmbeddingOptions(MethodOptions):
    embed_epochs: int = option(10, low=1)  # epochs of the embedding network on the real train set (cached)


@register_method("random")
class RandomSubset(Method):
    """ipc real images per class drawn uniformly without replacement."""

    def distill(self) -> DistillResult:
        return DistillResult(self.real_init(), self.hard_labels())


class EmbeddingSelection(Method):
    """Selects ipc rows per class from features of a network trained `embed_epochs` on the real data."""

    Options = EmbeddingOptions

    def select(self, features: torch.Tensor) -> torch.Tensor:
        """features [n, D] of one class → indices [ipc] into them."""
        raise TypeError(f"{type(self).__name__} must define select()")

    def distill(self) -> DistillResult:
        features = train_embeddings(
            self.splits, self.model_cfg, self.opts.embed_epochs, self.seed, self.device, self.cache
        )
        train = self.splits.train
        chosen = []
        for c in range(self.info.num_classes):
            rows = torch.arange(train.class_slice(c).start, train.class_slice(c).stop, device=self.device)
            chosen.append(rows[self.select(features[rows])])
        return DistillResult(train.images[torch.cat(chosen)].clone(), self.hard_labels())


@register_method("herding")
class Herding(EmbeddingSelection):
    """Greedy feature-mean matching: each pick brings the running mean of the selection closest to the class mean."""

    def select(self, features: torch.Tensor) -> torch.Tensor:
        target = features.mean(0)
        total = torch.zeros_like(target)
        taken = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        picks = []
        for k in range(min(self.ipc, len(features))):
            gap = ((total + features) / (k + 1) - target).norm(dim=1).masked_fill(taken, float("inf"))
            pick = gap.argmin()
            picks.append(pick)
            taken[pick] = True
            total += features[pick]
        return torch.stack(picks)


@register_method("kcenter")
class KCenterGreedy(EmbeddingSelection):
    """k-center greedy: start at a random sample, then repeatedly add the sample farthest from the selection."""

    def select(self, features: torch.Tensor) -> torch.Tensor:
        first = torch.randint(len(features), (1,), device=features.device, generator=self.generator)[0]
        picks = [first]
        nearest = (features - features[first]).norm(dim=1)
        for _ in range(min(self.ipc, len(features)) - 1):
            pick = nearest.argmax()
            picks.append(pick)
            nearest = torch.minimum(nearest, (features - features[pick]).norm(dim=1))
        return torch.stack(picks)
