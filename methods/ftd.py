"""FTD: flat trajectory distillation (Du et al., CVPR 2023).

MTT's distillation with experts trained by GSAM (adaptive, ρ = 0.01, constant lr) and an exponential moving
average of the synthetic images, ema ← d·ema + (1−d)·x̃ after every step, started at the initial images (no
bias correction, as the reference). The artifact holds the EMA images; they are evaluated with fresh
networks like every other artifact (the reference evaluates the EMA set on networks already trained on the
non-EMA images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddbench.methods.base import register_method
from ddbench.methods.experts import ExpertSpec
from ddbench.methods.options import option
from ddbench.methods.trajectory import TrajectoryMatching, TrajectoryOptions


@dataclass
class FTDOptions(TrajectoryOptions):
    experts: ExpertSpec = field(default_factory=lambda: ExpertSpec(optimizer="gsam", epochs=50, gsam_alpha=0.3))
    syn_steps: int = option(30, low=1)
    expert_epochs: int = option(2, low=1)
    max_start_epoch: int = option(20, low=1)
    lr_img: float = option(100.0, positive=True)
    lr_teacher: float = option(0.001, positive=True)
    ema_decay: float | None = option(0.9995, low=0)


@register_method("ftd")
class FTD(TrajectoryMatching):
    Options = FTDOptions
