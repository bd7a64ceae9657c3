"""DD-Ranking's fair scores, computed on accuracies as fractions in [0, 1].

* HLR (hard-label recovery) = acc(full real train set, hard labels) − acc(synthetic set, hard labels).
* IOR (improvement over random) = acc(synthetic, the method's recipe) − acc(random real subset, same recipe).
* LRS (label-robust score) = (e^α − e^−1) / (e − e^−1) with α = w·IOR − (1 − w)·HLR, w = 0.5.
* ARS (augmentation-robust score) = the same normalisation of β = γ·(syn_aug − rdm_aug) + (1 − γ)·(syn_noaug − rdm_noaug).

With fractions, α and β lie in [−1, 1], so LRS and ARS lie in [0, 1] (α = 0 gives 1/(1 + e) ≈ 0.269). DD-Ranking feeds
percentages into the same formula, which saturates it (α ≈ −20 gives ≈ −0.157); ddbench refuses values > 1.
Scores are computed per evaluation seed (seed s of every baseline is paired with seed s of the synthetic set)
and recorded once per run as the mean and the population std over seeds.
"""

from __future__ import annotations

import math
from typing import Sequence

from ddbench.utils import DDBenchError, mean_std


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        hint = f" (did you mean {value / 100:g}?)" if 1.0 < value <= 100.0 else ""
        raise DDBenchError(f"{name} must be an accuracy as a fraction in [0, 1], got {value!r}{hint}.")
    return value


def exp_normalize(x: float) -> float:
    """(e^x − e^−1) / (e − e^−1): maps [−1, 1] onto [0, 1], increasing."""
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hlr(acc_full_hard: float, acc_syn_hard: float) -> float:
    return _check_fraction("acc_full_hard", acc_full_hard) - _check_fraction("acc_syn_hard", acc_syn_hard)


def ior(acc_syn: float, acc_random: float) -> float:
    return _check_fraction("acc_syn", acc_syn) - _check_fraction("acc_random", acc_random)


def lrs(ior_value: float, hlr_value: float, weight: float = 0.5) -> float:
    """Label-robust score from IOR and HLR (both differences of fractions)."""
    alpha = weight * ior_value - (1 - weight) * hlr_value
    return exp_normalize(alpha)


def ars(syn_aug: float, rdm_aug: float, syn_noaug: float, rdm_noaug: float, weight: float = 0.5) -> float:
    """Augmentation-robust score from the four accuracies (fractions)."""
    beta = weight * ior(syn_aug, rdm_aug) + (1 - weight) * ior(syn_noaug, rdm_noaug)
    return exp_normalize(beta)


def seed_scores(
    wanted: Sequence[str],
    *,
    syn: Sequence[float],
    syn_hard: Sequence[float] | None = None,
    full_hard: Sequence[float] | None = None,
    random: Sequence[float] | None = None,
    syn_noaug: Sequence[float] | None = None,
    random_noaug: Sequence[float] | None = None,
    weight: float = 0.5,
    ars_weight: float = 0.5,
) -> dict[str, float]:
    """The record's `scores` dict from per-seed accuracies (fractions, one list entry per evaluation seed).

    For every score in `wanted` (hlr, ior, lrs, ars): `<score>` = mean over seeds and `<score>_std` = population
    std; plus the mean accuracies each is built from (`acc_full_hard`, `acc_syn_hard`, `acc_random`,
    `acc_syn_noaug`, `acc_random_noaug`), each key written once.
    """
    wanted = list(dict.fromkeys(wanted))
    per_seed: dict[str, list[float]] = {}
    n = len(syn)

    def need(name: str, values: Sequence[float] | None) -> Sequence[float]:
        if values is None or len(values) != n:
            raise DDBenchError(f"score needs {name} accuracies for each of the {n} seeds.")
        return values

    if {"hlr", "lrs"} & set(wanted):
        full, hard = need("full-data", full_hard), need("synthetic hard-label", syn_hard)
        per_seed["hlr"] = [hlr(f, h) for f, h in zip(full, hard)]
    if {"ior", "lrs"} & set(wanted):
        rdm = need("random-subset", random)
        per_seed["ior"] = [ior(s, r) for s, r in zip(syn, rdm)]
    if "lrs" in wanted:
        per_seed["lrs"] = [lrs(i, h, weight) for i, h in zip(per_seed["ior"], per_seed["hlr"])]
    if "ars" in wanted:
        rdm, syn_na, rdm_na = need("random-subset", random), need("no-aug synthetic", syn_noaug), need(
            "no-aug random-subset", random_noaug)
        per_seed["ars"] = [ars(a, b, c, d, ars_weight) for a, b, c, d in zip(syn, rdm, syn_na, rdm_na)]
    out: dict[str, float] = {}
    for name in wanted:
        out[name], out[f"{name}_std"] = mean_std(per_seed[name])
    for key, values in (("acc_full_hard", full_hard), ("acc_syn_hard", syn_hard), ("acc_random", random),
                        ("acc_syn_noaug", syn_noaug), ("acc_random_noaug", random_noaug)):
        if values is not None:
            out[key] = mean_std(values)[0]
    return out
