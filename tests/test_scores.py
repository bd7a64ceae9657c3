"""Fair scores (HLR, IOR, LRS, ARS) on fractions, and their cached baselines."""

from __future__ import annotations

import math

import pytest
import torch

from ddbench.cache import Cache
from ddbench.evaluation import EvalProtocol, Evaluator, evaluate_synthetic
from ddbench.evaluation.scores import ars, exp_normalize, hlr, ior, lrs, seed_scores
from ddbench.records import make_record
from ddbench.utils import DDBenchError, make_generator

E = math.e



pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- formulas


def test_hlr_ior_lrs_against_hand_computed_values():
    assert hlr(0.80, 0.50) == pytest.approx(0.30)
    assert ior(0.60, 0.40) == pytest.approx(0.20)
    # alpha = 0.5 * 0.20 - 0.5 * 0.30 = -0.05
    # LRS = (e^-0.05 - e^-1) / (e - e^-1) = (0.951229 - 0.367879) / (2.718282 - 0.367879) = 0.583350 / 2.350402
    assert lrs(0.20, 0.30) == pytest.approx(0.248192, abs=1e-6)
    # other weights: alpha = 0.8 * 0.2 - 0.2 * 0.3 = 0.1 → (1.105171 - 0.367879) / 2.350402 = 0.313688
    assert lrs(0.20, 0.30, weight=0.8) == pytest.approx(0.313688, abs=1e-6)


def test_normalisation_maps_the_fraction_range_onto_zero_one():
    assert exp_normalize(-1.0) == pytest.approx(0.0)
    assert exp_normalize(1.0) == pytest.approx(1.0)
    assert exp_normalize(0.0) == pytest.approx(1 / (1 + E))  # 0.268941
    # perfect recovery and a full improvement over random: alpha = 0.5 * 1 - 0.5 * 0 → 0.5
    assert lrs(1.0, 0.0) == pytest.approx((math.exp(0.5) - 1 / E) / (E - 1 / E))
    # worst case: IOR = -1, HLR = 1 → alpha = -1 → 0
    assert lrs(-1.0, 1.0) == pytest.approx(0.0)


def test_ars_against_hand_computed_value():
    # beta = 0.5 * (0.7 - 0.5) + 0.5 * (0.6 - 0.5) = 0.15; (e^0.15 - e^-1) / (e - e^-1) = (1.161834 - 0.367879) / 2.350402
    assert ars(0.70, 0.50, 0.60, 0.50) == pytest.approx(0.337795, abs=1e-6)
    # gamma = 1: only the augmented pair counts, beta = 0.2 → (1.221403 - 0.367879) / 2.350402
    assert ars(0.70, 0.50, 0.60, 0.50, weight=1.0) == pytest.approx(0.363140, abs=1e-6)


def test_percentages_are_refused_not_saturated():
    # DD-Ranking feeds percentage points: alpha = 0.5 * 20 - 0.5 * 30 = -5 ... a value outside [0, 1]
    assert exp_normalize(-20.0) == pytest.approx(-0.15652, abs=1e-5)
    with pytest.raises(DDBenchError, match="fraction"):
        hlr(80.0, 50.0)
    with pytest.raises(DDBenchError, match="did you mean 0.6"):
        ior(60.0, 0.4)


def test_seed_scores_pair_seeds_and_write_each_key_once():
    out = seed_scores(["hlr", "ior", "lrs"], syn=[0.6, 0.7], syn_hard=[0.5, 0.6], full_hard=[0.9, 0.9],
                      random=[0.4, 0.5])
    assert set(out) == {"hlr", "hlr_std", "ior", "ior_std", "lrs", "lrs_std", "acc_full_hard", "acc_syn_hard",
                        "acc_random"}
    assert out["hlr"] == pytest.approx(0.35) and out["hlr_std"] == pytest.approx(0.05)
    assert out["ior"] == pytest.approx(0.2) and out["ior_std"] == pytest.approx(0.0, abs=1e-12)
    per_seed = [lrs(0.2, 0.4), lrs(0.2, 0.3)]  # alpha -0.1 and -0.05
    assert out["lrs"] == pytest.approx(sum(per_seed) / 2)
    assert out["lrs_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
    assert out["acc_full_hard"] == pytest.approx(0.9) and out["acc_random"] == pytest.approx(0.45)
    # asking twice for a score still writes it once
    assert set(seed_scores(["ior", "ior"], syn=[0.5], random=[0.4])) == {"ior", "ior_std", "acc_random"}
    with pytest.raises(DDBenchError, match="random-subset"):
        seed_scores(["ior"], syn=[0.5, 0.6], random=[0.4])


def test_protocol_validates_score_names():
    with pytest.raises(DDBenchError, match="hlr, ior, lrs, ars"):
        EvalProtocol.from_dict({"scores": ["ddrs"]})
    assert EvalProtocol.from_dict({}).scores == []  # off by default (dc)


# ------------------------------------------------------------------------------- on real training


def _tiny_protocol(**overrides) -> EvalProtocol:
    cfg = dict(epochs=3, epochs_no_aug=3, augment="dsa", num_seeds=2, models=["mlp"], model_kwargs={"mlp": {"width": 16}},
               batch_size=64, scores=["hlr", "ior", "lrs", "ars"], full_data={"epochs": 1, "batch_size": 128},
               learned_lr=False)
    cfg.update(overrides)
    return EvalProtocol.from_dict(cfg)


def test_scores_end_to_end_use_cached_baselines(digits_small, tmp_path, monkeypatch):
    rows = digits_small.train.sample_per_class(2, make_generator(1)).flatten()
    x, y = digits_small.train.images[rows], digits_small.train.labels[rows]
    proto = _tiny_protocol()
    cache = Cache(tmp_path / "cache")
    fits = []
    original_fit = Evaluator.fit

    def counting_fit(self, protocol, name, images, *args, **kwargs):
        fits.append(tuple(images.shape))
        return original_fit(self, protocol, name, images, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "fit", counting_fit)
    first = evaluate_synthetic(x, y, digits_small, proto, cache=cache, ipc=2)[0]
    s = first.scores
    # hard labels and no mixing: the run itself is the hard-label run
    assert s["acc_syn_hard"] == pytest.approx(first.mean)
    assert s["hlr"] == pytest.approx(s["acc_full_hard"] - s["acc_syn_hard"], abs=1e-6)
    assert s["ior"] == pytest.approx(first.mean - s["acc_random"], abs=1e-6)
    assert 0.0 <= s["lrs"] <= 1.0 and 0.0 <= s["ars"] <= 1.0
    shape = tuple(digits_small.info.shape)
    # main run, full data, random subsets (one per seed: [S, 2*10, ...]), no-aug syn, no-aug random
    assert (len(digits_small.train), *shape) in fits and (2, 20, *shape) in fits
    assert len(fits) == 5
    fits.clear()
    again = evaluate_synthetic(x, y, digits_small, proto, cache=cache, ipc=2)[0]
    assert len(fits) == 2  # the synthetic runs only; full-data and random baselines come from the cache
    assert again.scores == pytest.approx(s)
    assert len(list((tmp_path / "cache" / "baselines").glob("*.safetensors"))) == 3
    record = make_record(run_id="r", method="random", dataset="digits", ipc=2, label_type="hard", protocol="x",
                         eval_model="mlp", accuracies=first.accuracies, seeds=first.seeds, distill_seconds=None,
                         eval_seconds=1.0, peak_gpu_memory_bytes=None, device="cpu", config={}, seed=0,
                         artifact=None, scores=first.scores)
    assert record["scores"]["lrs"] == s["lrs"]


def test_score_seconds_count_this_sets_score_runs_and_new_baselines_not_the_whole_dataset_run(digits_small, tmp_path,
                                                                                              monkeypatch):
    rows = digits_small.train.sample_per_class(2, make_generator(1)).flatten()
    x, y = digits_small.train.images[rows], digits_small.train.labels[rows]
    proto = _tiny_protocol()
    cache = Cache(tmp_path / "cache")
    took: list[tuple[str, float]] = []  # (which run, the seconds it added)
    original_fit = Evaluator.fit

    def timed_fit(self, protocol, name, images, *args, **kwargs):
        before = self.fit_seconds
        out = original_fit(self, protocol, name, images, *args, **kwargs)
        which = ("full" if len(images) == len(digits_small.train) else "random" if images.dim() == 5
                 else "noaug" if protocol.augment in (None, "none") else "main")
        took.append((which, self.fit_seconds - before))
        return out

    monkeypatch.setattr(Evaluator, "fit", timed_fit)
    first = evaluate_synthetic(x, y, digits_small, proto, cache=cache, ipc=2)[0]
    assert sorted(w for w, _ in took) == ["full", "main", "noaug", "random", "random"]
    assert first.seconds == pytest.approx(sum(t for w, t in took if w == "main"))
    # the random baselines this call trained and the set's own no-augmentation run; not the whole-dataset run
    assert first.score_seconds == pytest.approx(sum(t for w, t in took if w in ("random", "noaug")))
    assert first.score_seconds > 0
    noaug = sum(t for w, t in took if w == "noaug")
    took.clear()
    again = evaluate_synthetic(x, y, digits_small, proto, cache=cache, ipc=2)[0]
    # the baselines come from the cache (another cell paid for them); the set's own run counts its cached seconds
    assert again.score_seconds == pytest.approx(noaug)
    plain = evaluate_synthetic(x, y, digits_small, _tiny_protocol(scores=[]), cache=cache, ipc=2)[0]
    assert plain.score_seconds == 0.0 and plain.scores == {}


def test_random_subsets_are_per_seed_and_method_independent(digits_small):
    ev = Evaluator(digits_small, _tiny_protocol())
    a_images, a_labels = ev.random_subsets(3, [0, 1], digits_small.train)
    b_images, b_labels = ev.random_subsets(3, [0, 1], digits_small.train)
    assert a_images.shape == (2, 30, *digits_small.info.shape)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert not torch.equal(a_images[0], a_images[1])  # a fresh subset per seed
    assert a_labels[0].tolist() == [c for c in range(10) for _ in range(3)]  # class-major
