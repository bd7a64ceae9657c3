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

from ddbench.methods.base import register_method
from ddbench.methods.trajectory import TrajectoryMatching


@register_method("datm")
class DATM(TrajectoryMatching):
    defaults = {
        **TrajectoryMatching.defaults,
        "experts": {"optimizer": "gsam", "epochs": 100, "rho": 0.01, "gsam_alpha": 0.3, "adaptive": True},
        "iterations": 10000, "syn_steps": 80, "expert_epochs": 2, "min_start_epoch": 0, "max_start_epoch": 20,
        "sequential_generation": True, "current_max_start_epoch": 10, "expansion_end": 1000,
        "batch_syn": None, "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "lr_y": 2.0, "momentum_y": 0.9,
        "init": "correct_real", "labels": "soft", "threshold": 1.0,
    }
