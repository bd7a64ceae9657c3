"""FTD: flat trajectory distillation (Du et al., CVPR 2023).

MTT's distillation with experts trained by GSAM (adaptive, ρ = 0.01, constant lr) and an exponential moving
average of the synthetic images, ema ← d·ema + (1−d)·x̃ after every step, started at the initial images (no
bias correction, as the reference). The artifact holds the EMA images; they are evaluated with fresh
networks like every other artifact (the reference evaluates the EMA set on networks already trained on the
non-EMA images).
"""

from __future__ import annotations

from ddbench.methods.base import register_method
from ddbench.methods.trajectory import TrajectoryMatching


@register_method("ftd")
class FTD(TrajectoryMatching):
    defaults = {
        **TrajectoryMatching.defaults,
        "experts": {"optimizer": "gsam", "epochs": 50, "rho": 0.01, "gsam_alpha": 0.3, "adaptive": True},
        "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20,
        "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "ema_decay": 0.9995,
    }
