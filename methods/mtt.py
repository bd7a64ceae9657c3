"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022).

Experts: plain SGD (lr 0.01, no momentum, no weight decay, batch 256, DSA on every real batch), snapshots after
every epoch. Distillation: real (or noise) init, hard labels, a learnable synthetic step size α, N unrolled
steps from a uniformly drawn start epoch t ∈ [0, max_start_epoch), the normalised parameter-matching loss;
momentum-0.5 SGD on the images (lr_img) and on α (lr_lr). See methods/trajectory.py for the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddbench.methods.base import register_method
from ddbench.methods.experts import ExpertSpec
from ddbench.methods.options import option
from ddbench.methods.trajectory import TrajectoryMatching, TrajectoryOptions


@dataclass
class MTTOptions(TrajectoryOptions):
    experts: ExpertSpec = field(default_factory=lambda: ExpertSpec(optimizer="sgd", epochs=50))
    syn_steps: int = option(30, low=1)
    expert_epochs: int = option(2, low=1)
    max_start_epoch: int = option(20, low=1)
    lr_img: float = option(100.0, positive=True)
    lr_teacher: float = option(0.001, positive=True)


@register_method("mtt")
class MTT(TrajectoryMatching):
    Options = MTTOptions
