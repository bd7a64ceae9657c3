"""DataDAM: attention maps, SAM/MMD losses against hand computations, Siamese replay, the method end to end."""

from __future__ import annotations

import pytest
import torch

from ddbench.augment import DSA
from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.methods import create_method
from ddbench.methods.datadam import attention_map, datadam_loss, matching_statistics
from ddbench.utils import DDBenchError

CPU = torch.device("cpu")
MODEL = {"name": "convnet", "width": 8}

pytestmark = pytest.mark.usefixtures("one_thread")


def make(splits, ipc: int, tmp_path, options: dict, augment: dict | None = None, seed: int = 0):
    return create_method("datadam", splits=splits, ipc=ipc, seed=seed, device=CPU, options=options, model=MODEL,
                         augment=augment or {"enabled": False}, cache=Cache(tmp_path))


def test_attention_map_matches_a_hand_computation():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 2, 2)
    for p in (1.0, 2.0, 3.0, 4.0, 6.0):  # odd and even powers take different paths
        out = attention_map(a, p)
        for b in range(2):
            raw = [sum(abs(float(a[b, c, i, j])) ** p for c in range(3)) for i in range(2) for j in range(2)]
            norm = sum(v * v for v in raw) ** 0.5
            torch.testing.assert_close(out[b], torch.tensor([v / norm for v in raw]), rtol=1e-5, atol=1e-6)
    assert attention_map(a, 4.0).shape == (2, 4)


def test_sam_and_mmd_losses_match_a_hand_computation():
    torch.manual_seed(0)
    k, n_real, n_syn = 3, 4, 2
    real_maps = [torch.randn(k * n_real, 5, 4, 4), torch.randn(k * n_real, 5, 2, 2), torch.randn(k * n_real, 5, 1, 1)]
    syn_maps = [torch.randn(k * n_syn, 5, 4, 4), torch.randn(k * n_syn, 5, 2, 2), torch.randn(k * n_syn, 5, 1, 1)]
    real_emb, syn_emb = torch.randn(k * n_real, 6), torch.randn(k * n_syn, 6)
    lam, p = 0.01, 4.0
    sam, mmd = datadam_loss(matching_statistics(real_maps, real_emb, k, p), matching_statistics(syn_maps, syn_emb, k, p),
                            lam)

    def att(x):  # [C,H,W] → list of floats
        raw = (x.abs() ** p).sum(0).flatten().tolist()
        norm = sum(v * v for v in raw) ** 0.5
        return [v / norm for v in raw]

    def mean(rows):
        return [sum(col) / len(rows) for col in zip(*rows)]

    hand_sam = hand_mmd = 0.0
    for c in range(k):
        r, s = slice(c * n_real, (c + 1) * n_real), slice(c * n_syn, (c + 1) * n_syn)
        for layer in range(2):  # every map but the last
            mr = mean([att(x) for x in real_maps[layer][r]])
            ms = mean([att(x) for x in syn_maps[layer][s]])
            hand_sam += sum((u - v) ** 2 for u, v in zip(mr, ms))
        mr, ms = mean(real_emb[r].tolist()), mean(syn_emb[s].tolist())
        hand_mmd += sum((u - v) ** 2 for u, v in zip(mr, ms))
    torch.testing.assert_close(sam, torch.tensor(100 * hand_sam), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mmd, torch.tensor(100 * lam * hand_mmd), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    """digits with exactly 6 train images per class."""
    return load_dataset("digits", max_train_per_class=6, max_test_per_class=2)


@pytest.mark.parametrize("norm", ["batchnorm", "instancenorm"])
def test_siamese_replay_inside_datadam(tiny, tmp_path, monkeypatch, norm):
    """The synthetic set = the whole real class data: with one DSA draw per class replayed on the real and the
    synthetic images, both passes see the same augmented set per class, so the loss is zero and nothing moves."""
    applied = []
    original = DSA.apply

    def spy(self, x, draw):
        applied.append((id(draw), x.shape[0], draw.groups, draw.per_sample))
        return original(self, x, draw)

    monkeypatch.setattr(DSA, "apply", spy)
    method = make(tiny, 6, tmp_path, {"iterations": 3, "batch_real": 6, "norm": norm}, augment={"enabled": True})
    init = method.real_init()
    method.generator.manual_seed(0)  # real_init consumed the stream; distill starts again from the run's seed
    result = method.distill()
    assert len(applied) == 6
    for real, syn in zip(applied[0::2], applied[1::2]):
        assert real[0] == syn[0]  # the same draw for the real and the synthetic batch
        assert real[2] == 10 and real[3] is False  # one parameter set per class
    assert result.meta["final_loss"] == pytest.approx(0.0, abs=1e-6)
    assert result.meta["network_norm"] == norm
    torch.testing.assert_close(result.images, init, atol=1e-4, rtol=0)  # only rounding-level gradients


def test_datadam_moves_the_images_and_records_its_settings(digits_small, tmp_path):
    method = make(digits_small, 2, tmp_path, {"iterations": 4, "batch_real": 8}, augment={"enabled": True})
    init = method.real_init()
    method.generator.manual_seed(0)
    result = method.distill()
    assert result.images.shape == (20, 1, 16, 16) and bool(torch.isfinite(result.images).all())
    assert not torch.allclose(result.images, init)
    assert result.labels.tolist() == torch.arange(10).repeat_interleave(2).tolist()
    meta = result.meta
    assert meta["network_norm"] == "batchnorm" and meta["attention_power"] == 4.0 and meta["lr_img"] == 1.0
    assert meta["final_sam_loss"] > 0 and meta["final_mmd_loss"] > 0
    again = make(digits_small, 2, tmp_path, {"iterations": 4, "batch_real": 8}, augment={"enabled": True}).distill()
    torch.testing.assert_close(again.images, result.images)


def test_datadam_rejects_bad_options_and_models_without_maps(digits_small, tmp_path):
    with pytest.raises(DDBenchError, match="power"):
        make(digits_small, 1, tmp_path, {"iterations": 1, "power": 0}).distill()
    with pytest.raises(DDBenchError, match="init"):
        make(digits_small, 1, tmp_path, {"iterations": 1, "init": "smart"}).distill()
    method = create_method("datadam", splits=digits_small, ipc=1, seed=0, device=CPU, options={"iterations": 1},
                           model={"name": "timm:resnet10t"}, augment={"enabled": False}, cache=Cache(tmp_path))
    with pytest.raises(DDBenchError, match="feature_maps"):
        method.distill()
