"""DQ: gradient-embedding similarity, GraphCut bins and bin sampling against brute force, the patch decode rule,
and the method end to end (real rows of the right class, stored bytes)."""

from __future__ import annotations

import pytest
import torch

from ddbench.artifact import load_artifact, save_artifact
from ddbench.artifact.patches import check_patch_fill, fill_dropped, fit_pixel_prior, kept_bytes, pixel_mask
from ddbench.cache import Cache
from ddbench.methods import create_method
from ddbench.methods.dq import bin_quotas, embedding_similarity, gradient_similarity, graphcut_bins, keep_mask, sample_from_bins
from ddbench.utils import DDBenchError, make_generator

CPU = torch.device("cpu")
MODEL = {"name": "convnet", "width": 8}
OPTIONS = {"embedding": {"epochs": 1, "batch_size": 64}}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gradient_similarity_equals_the_materialised_gradient_embedding():
    torch.manual_seed(0)
    delta, emb = torch.randn(6, 3), torch.randn(6, 5)
    g = torch.cat([delta, (delta.unsqueeze(2) * emb.unsqueeze(1)).flatten(1)], 1)  # [δ, vec(δ eᵀ)]
    g = g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(gradient_similarity(delta, emb), 0.5 + 0.5 * g @ g.T, rtol=1e-5, atol=1e-6)
    e = emb / emb.norm(dim=1, keepdim=True)
    torch.testing.assert_close(embedding_similarity(emb), 0.5 + 0.5 * e @ e.T, rtol=1e-5, atol=1e-6)


def brute_force_bins(sim: torch.Tensor, n: int, bin_size: int, num_bins: int, lam: float) -> list[int]:
    """GraphCut greedy with every gain recomputed from scratch, one candidate at a time."""
    s = sim[:n, :n].tolist()
    bins = [-1] * n
    for b in range(num_bins - 1):
        pool = [i for i in range(n) if bins[i] == -1]
        chosen: list[int] = []
        for _ in range(min(bin_size, len(pool))):
            best, best_gain = None, float("-inf")
            for k in pool:
                if k in chosen:
                    continue
                gain = lam * sum(s[i][k] for i in pool) - 2 * sum(s[j][k] for j in chosen)
                if gain > best_gain:
                    best, best_gain = k, gain
            chosen.append(best)
            bins[best] = b
    return [num_bins - 1 if v == -1 else v for v in bins]


def test_graphcut_bins_match_a_brute_force_loop():
    torch.manual_seed(0)
    sizes, n_max, num_bins, lam = [13, 9], 13, 4, 1.0
    delta, emb = torch.randn(2, n_max, 3), torch.randn(2, n_max, 4)
    valid = torch.arange(n_max) < torch.tensor(sizes).unsqueeze(1)
    sim = gradient_similarity(delta, emb) * (valid.unsqueeze(-1) & valid.unsqueeze(1))
    bin_size = torch.tensor([round(s / num_bins) for s in sizes])  # 3 and 2 (banker's rounding of 2.25)
    bins = graphcut_bins(sim, valid, bin_size, num_bins, lam)
    for c, n in enumerate(sizes):
        expected = brute_force_bins(sim[c], n, int(bin_size[c]), num_bins, lam)
        assert bins[c, :n].tolist() == expected
        assert bins[c, n:].tolist() == [-1] * (n_max - n)
        counts = [expected.count(b) for b in range(num_bins)]
        assert counts == [int(bin_size[c])] * (num_bins - 1) + [n - (num_bins - 1) * int(bin_size[c])]


def test_bin_quotas_and_uniform_sampling_from_bins():
    counts = torch.tensor([[3, 3, 3, 4], [5, 1, 0, 2]])
    assert bin_quotas(counts, 4).tolist() == [[1, 1, 1, 1], [3, 0, 0, 1]]  # largest remainder, ties to lower bins
    bins = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 3], [0, 0, 0, 0, 0, 1, 3, 3, -1, -1, -1, -1, -1]])
    seen = set()
    for seed in range(30):
        picks = sample_from_bins(bins, 4, 4, make_generator(seed, CPU))
        assert picks.shape == (2, 4)
        for c in range(2):
            rows = picks[c].tolist()
            assert len(set(rows)) == 4 and all(int(bins[c, r]) >= 0 for r in rows)
            got = [sum(int(bins[c, r]) == b for r in rows) for b in range(4)]
            assert got == bin_quotas(counts, 4)[c].tolist()
        seen.add(tuple(picks[0].tolist()))
    assert len(seen) > 5  # uniform within bins, not a fixed choice


def test_fill_keeps_the_kept_patches_and_mean_fill_is_the_kept_mean():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 4, 4)
    keep = torch.tensor([[[1, 0], [0, 1]], [[1, 1], [1, 0]]], dtype=torch.uint8)
    known = pixel_mask(keep, 2).bool().expand_as(images)
    for fill in ("mean", "blur"):
        out = fill_dropped(images, keep, 2, fill)
        assert torch.equal(out[known], images[known])
        torch.testing.assert_close(fill_dropped(images * known, keep, 2, fill), out)  # depends on kept pixels only
    prior = fit_pixel_prior(torch.randn(50, 3, 4, 4), rank=5)
    out = fill_dropped(images, keep, 2, "ppca", prior)
    assert torch.equal(out[known], images[known])
    torch.testing.assert_close(fill_dropped(images * known, keep, 2, "ppca", prior), out)
    with pytest.raises(DDBenchError, match="prior"):
        fill_dropped(images, keep, 2, "ppca")
    mean = fill_dropped(images, keep, 2, "mean")
    expected = images[0, :, :2, :2].sum((1, 2)) + images[0, :, 2:, 2:].sum((1, 2))
    torch.testing.assert_close(mean[0, :, 0, 3], expected / 8)
    with pytest.raises(DDBenchError, match="fill"):
        fill_dropped(images, keep, 2, "mae")


def test_ppca_fill_recovers_images_of_a_low_rank_set_and_is_the_gaussian_posterior_mean():
    torch.manual_seed(0)
    basis, centre = torch.randn(48, 6), torch.randn(48)
    train = (centre + torch.randn(400, 6) @ basis.T).view(400, 3, 4, 4)  # rank 6 around a mean
    prior = fit_pixel_prior(train, rank=6)
    torch.testing.assert_close(prior["pixel_prior_mean"], train.flatten(1).mean(0), rtol=1e-5, atol=1e-5)
    images = (centre + torch.randn(5, 6) @ basis.T).view(5, 3, 4, 4)
    keep = torch.tensor([[[1, 0], [1, 1]]] * 5, dtype=torch.uint8)  # a quarter dropped: 36 known pixels ≥ rank
    torch.testing.assert_close(fill_dropped(images * pixel_mask(keep, 2), keep, 2, "ppca", prior), images,
                               rtol=1e-3, atol=1e-3)
    # against the Gaussian conditional mean μ_u + Σ_uk Σ_kk⁻¹ (x_k − μ_k) of the fitted model, Σ = W Wᵀ + σ² I
    noisy = torch.randn(300, 1, 4, 4) @ torch.randn(4, 4) + 0.3 * torch.randn(300, 1, 4, 4)
    prior = fit_pixel_prior(noisy, rank=3)
    w, mu, s2 = prior["pixel_prior_basis"].double(), prior["pixel_prior_mean"].double(), float(prior["pixel_prior_noise"])
    sigma = w @ w.T + s2 * torch.eye(16, dtype=torch.float64)
    x = noisy[0].clone()
    keep = torch.tensor([[[1, 1], [0, 1]]], dtype=torch.uint8)
    k = pixel_mask(keep, 2).bool().flatten()
    expected = x.flatten().double().clone()
    expected[~k] = mu[~k] + sigma[~k][:, k] @ torch.linalg.solve(sigma[k][:, k], expected[k] - mu[k])
    got = fill_dropped(x.unsqueeze(0), keep, 2, "ppca", prior)
    torch.testing.assert_close(got.flatten().double(), expected, rtol=1e-4, atol=1e-5)


def test_keep_mask_keeps_the_highest_cam_patches():
    cam = torch.arange(16.0).view(1, 4, 4)
    keep = keep_mask(cam, (4, 4), 0.25)
    assert keep.dtype == torch.uint8 and int(keep.sum()) == 12
    assert keep.flatten()[:4].tolist() == [0, 0, 0, 0]


def make(splits, ipc, tmp_path, options=None, seed=0):
    return create_method("dq", splits=splits, ipc=ipc, seed=seed, device=CPU, options=options or OPTIONS,
                         model=MODEL, augment={"enabled": False}, cache=Cache(tmp_path / "cache"))


def artifact_of(result, splits, ipc):
    from ddbench.artifact import Artifact

    meta = {"dataset": "digits", "num_classes": 10, "image_shape": list(splits.info.shape), "ipc": ipc,
            "method": "dq", **result.meta}
    return Artifact(result.images, result.labels, meta, extras=result.extras)


def test_dq_picks_real_rows_of_the_labelled_class_without_pixels(digits_small, tmp_path):
    result = make(digits_small, 3, tmp_path, {**OPTIONS, "pixel": False}).distill()
    rows = torch.tensor(result.meta["dq"]["selected_rows"])
    train = digits_small.train
    assert torch.equal(result.images, train.images[rows])
    assert torch.equal(train.labels[rows], result.labels) and len(set(rows.tolist())) == 30
    assert result.meta["dq"]["num_bins"] == 3 and result.meta["dq"]["bin_size"] == [[10, 10]] * 10  # [K][bins - 1]
    assert "decode" not in result.meta and not result.extras
    again = make(digits_small, 3, tmp_path, {**OPTIONS, "pixel": False}).distill()
    assert again.meta["dq"]["selected_rows"] == result.meta["dq"]["selected_rows"]


def test_dq_artifact_decode_rule_and_stored_bytes(digits_small, tmp_path):
    ipc = 2
    result = make(digits_small, ipc, tmp_path).distill()
    saved = save_artifact(artifact_of(result, digits_small, ipc), tmp_path / "artifact")
    loaded = load_artifact(saved)
    keep = loaded.extras["dq_patch_mask"]
    assert keep.shape == (20, 8, 8) and int(keep.sum()) == 20 * 51  # round(0.8 * 64) patches per image
    decoded = check_patch_fill(loaded.images, loaded.extras, loaded.meta["decode"])
    torch.testing.assert_close(decoded, loaded.images)
    assert loaded.meta["stored_bytes"] == 20 * 51 * 4 * 4 + 160 + 20 * 8 == kept_bytes(keep, 1, 2, loaded.labels)
    assert loaded.meta["stored_bytes"] < loaded.meta["file_bytes"]
    rows = torch.tensor(loaded.meta["dq"]["selected_rows"])
    known = pixel_mask(keep, 2).bool()
    assert torch.equal(loaded.images[known], digits_small.train.images[rows][known])
    tampered = loaded.images.clone()
    tampered[~known] += 1.0
    with pytest.raises(DDBenchError, match="decode"):
        check_patch_fill(tampered, loaded.extras, loaded.meta["decode"])


def test_dq_ppca_fill_stores_its_decoder_and_decodes_from_the_kept_patches(digits_small, tmp_path):
    ipc = 2
    result = make(digits_small, ipc, tmp_path, {**OPTIONS, "fill": "ppca", "fill_rank": 16}).distill()
    saved = save_artifact(artifact_of(result, digits_small, ipc), tmp_path / "artifact")
    loaded = load_artifact(saved)
    decode = loaded.meta["decode"]
    assert decode["fill"] == "ppca" and decode["prior"]["rank"] == 16
    assert loaded.extras["pixel_prior_basis"].shape == (256, 16) and loaded.extras["pixel_prior_mean"].shape == (256,)
    assert decode["prior"]["decoder_bytes"] == 4 * 256 * 17
    keep = loaded.extras["dq_patch_mask"]
    assert loaded.meta["stored_bytes"] == kept_bytes(keep, 1, 2, loaded.labels)  # the decoder is not counted
    torch.testing.assert_close(check_patch_fill(loaded.images, loaded.extras, decode), loaded.images)
    blur = make(digits_small, ipc, tmp_path, {**OPTIONS, "fill": "blur"}).distill().images
    assert not torch.allclose(blur, loaded.images)  # a different fill of the same dropped patches
    known = pixel_mask(keep, 2).bool()
    assert torch.equal(blur[known], loaded.images[known])
    del loaded.extras["pixel_prior_basis"]
    with pytest.raises(DDBenchError, match="prior"):
        check_patch_fill(loaded.images, loaded.extras, decode)


def test_dq_rejects_bad_options(digits_small, tmp_path):
    with pytest.raises(DDBenchError, match="smallest class"):
        make(digits_small, 31, tmp_path).distill()
    with pytest.raises(DDBenchError, match="mask_ratio"):
        make(digits_small, 1, tmp_path, {**OPTIONS, "mask_ratio": 1.0}).distill()
    with pytest.raises(DDBenchError, match="patch"):
        make(digits_small, 1, tmp_path, {**OPTIONS, "patch": 3}).distill()
    with pytest.raises(DDBenchError, match="features"):
        make(digits_small, 1, tmp_path, {**OPTIONS, "features": "pixels"}).distill()
    with pytest.raises(DDBenchError, match="TeacherConfig"):
        make(digits_small, 1, tmp_path, {"embedding": {"epoch": 1}}).distill()


def test_dq_bin_sizes_follow_the_reference_quantize_loop():
    """Every bin takes round(N / bins) images, split among classes by what each has left (DeepCore's
    round(fraction * len(class)) per bin), so unequal classes get sizes that change from bin to bin."""
    from ddbench.methods.dq import bin_sizes

    assert bin_sizes([30] * 4, 3) == [[10, 10]] * 4  # equal classes: round(|c| / bins), constant
    sizes = bin_sizes([20, 23, 17, 21, 19], 5)
    assert [s[0] for s in sizes] == [4, 5, 3, 4, 4]  # 20 per bin: 0.2 x each class
    assert [s[1] for s in sizes] == [4, 4, 4, 4, 4]  # 20 of the 80 left: 0.25 x [16, 18, 14, 17, 15], half to even
    assert all(sum(s[b] for s in sizes) in (19, 20, 21) for b in range(4))
    assert bin_sizes([2, 50], 10)[0] == [1, 1, 0, 0, 0, 0, 0, 0, 0]  # at least 1 while a class has images left
    assert bin_sizes([7, 9], 1) == [[], []]  # one bin (IPC 1): nothing to size


def test_dq_at_ipc_1_keeps_one_bin(digits_small, tmp_path):
    """IPC 1 caps the bins at 1 (every row in it): the distillation runs and picks one real row per class."""
    result = make(digits_small, 1, tmp_path, {**OPTIONS, "pixel": False}).distill()
    assert result.meta["dq"]["num_bins"] == 1 and len(result.meta["dq"]["selected_rows"]) == 10
