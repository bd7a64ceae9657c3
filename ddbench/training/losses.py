"""The trainer's losses over S networks at once: each network's batch mean, summed over networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_loss(student: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor | None = None,
              partner: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy; under mixing lam_s·CE(y_i) + (1 − lam_s)·CE(y_partner(i)).

    student [S,B,K] logits; labels, partner [S,B] int64; lam [S].
    """
    s, b, k = student.shape
    if lam is None:
        return F.cross_entropy(student.reshape(s * b, k), labels.reshape(s * b), reduction="sum") / b
    ce = F.cross_entropy(student.reshape(s * b, k), labels.reshape(s * b), reduction="none").view(s, b)
    ce_partner = F.cross_entropy(student.reshape(s * b, k), partner.reshape(s * b), reduction="none").view(s, b)
    lam_ = lam.view(s, 1).to(ce.dtype)
    return (lam_ * ce + (1 - lam_) * ce_partner).sum() / b


def kd_loss(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = False) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(student/T)), × T² if asked. student, target: logits [S,B,K] (target constant).

    Its gradient equals the soft cross-entropy's, so at T = 1 it trains like the classic soft-label evaluator.
    """
    batch = student.shape[1]
    log_p = (target / temperature).log_softmax(-1)
    log_q = (student / temperature).log_softmax(-1)
    loss = (log_p.exp() * (log_p - log_q)).sum() / batch
    return loss * temperature**2 if t2_scaling else loss
