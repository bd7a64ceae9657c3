"""DATM: difficulty-aligned trajectory matching (Guo et al., ICLR 2024).

On top of MTT with GSAM experts (100 epochs):

* init ``correct_real``: per class, real images that the experts' final networks classify correctly;
* soft labels: the mean logits of the experts that classify each image correctly, learned through the whole
  unroll (momentum-SGD with lr_y, momentum_y) and used with the soft cross-entropy in the inner loop;
* a start-epoch window [min_start_epoch, U_it) whose exclusive upper bound grows from
  current_max_start_epoch to max_start_epoch over expansion_end iterations (sequential generation);
* a threshold: the update is skipped when the matching loss exceeds it (the backward pass still runs).

The artifact stores the learned soft labels (float logits) and the learned step size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddbench.methods.base import register_method
from ddbench.methods.experts import ExpertSpec
from ddbench.methods.options import option
from ddbench.methods.trajectory import INITS, LABELS, TrajectoryMatching, TrajectoryOptions


@dataclass
class DATMOptions(TrajectoryOptions):
    experts: ExpertSpec = field(default_factory=lambda: ExpertSpec(optimizer="gsam", epochs=100, gsam_alpha=0.3))
    iterations: int = option(10000, low=0)
    syn_steps: int = option(80, low=1)
    expert_epochs: int = option(2, low=1)
    max_start_epoch: int = option(20, low=1)
    sequential_generation: bool = True
    current_max_start_epoch: int | None = option(10, low=1)
    expansion_end: int | None = option(1000, low=1)
    lr_img: float = option(100.0, positive=True)
    init: str = option("correct_real", choices=INITS)
    labels: str = option("soft", choices=LABELS)
    threshold: float | None = 1.0


@register_method("datm")
class DATM(TrajectoryMatching):
    Options = DATMOptions
