"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022).

Experts: plain SGD (lr 0.01, no momentum, no weight decay, batch 256, DSA on every real batch), snapshots after
every epoch. Distillation: real (or noise) init, hard labels, a learnable synthetic step size α, N unrolled
steps from a uniformly drawn start epoch t ∈ [0, max_start_epoch), the normalised parameter-matching loss;
momentum-0.5 SGD on the images (lr_img) and on α (lr_lr). See methods/trajectory.py for the loop.
"""

from __future__ import annotations

from ddbench.methods.base import register_method
from ddbench.methods.trajectory import TrajectoryMatching


@register_method("mtt")
class MTT(TrajectoryMatching):
    defaults = {
        **TrajectoryMatching.defaults,
        "experts": {"optimizer": "sgd", "epochs": 50},
        "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20,
        "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001,
    }
