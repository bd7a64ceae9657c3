"""Distillation methods: the registry, the coreset baselines (random, herding, k-center) and DM."""

from __future__ import annotations

import pytest
import torch

from ddbench.cache import Cache
from ddbench.methods import create_method, list_methods
from ddbench.training.embedding import embedding_recipe, train_embeddings
from ddbench.models import create_model
from ddbench.utils import DDBenchError

CPU = torch.device("cpu")
MODEL = {"name": "convnet", "width": 16}
# per-method options small enough for a CPU test (each method's `smoke` block is of this size)
OPTIONS = {
    "random": {},
    "herding": {"embed_epochs": 1},
    "kcenter": {"embed_epochs": 1},
    "dm": {"iterations": 3, "batch_real": 8},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("cache"))


def make(name: str, splits, ipc: int, cache: Cache, seed: int = 0, options: dict | None = None, augment=None):
    return create_method(
        name, splits=splits, ipc=ipc, seed=seed, device=CPU, options=options if options is not None else OPTIONS[name],
        model=MODEL, augment=augment if augment is not None else {"enabled": False}, cache=cache,
    )


def class_rows(splits, c: int) -> torch.Tensor:
    s = splits.train.class_slice(c)
    return torch.arange(s.start, s.stop)


def row_of(splits, image: torch.Tensor) -> int:
    """The training row holding exactly `image` (-1 when none does)."""
    hits = (splits.train.images == image).flatten(1).all(1).nonzero().flatten()
    return int(hits[0]) if len(hits) else -1


@pytest.fixture(scope="module")
def features(digits_small, cache) -> torch.Tensor:
    """The embedding herding/k-center use for MODEL, 1 epoch, seed 0 (from the shared module cache)."""
    return train_embeddings(digits_small, MODEL, 1, 0, CPU, cache)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_the_baselines():
    assert set(OPTIONS) <= set(list_methods())


def test_unknown_method_names_the_valid_ones(digits_small, cache):
    with pytest.raises(DDBenchError) as err:
        create_method("nope", splits=digits_small, ipc=1, seed=0, device=CPU)
    message = str(err.value)
    assert "'nope'" in message
    for name in list_methods():
        assert name in message


def test_ipc_must_be_positive(digits_small, cache):
    with pytest.raises(DDBenchError, match="ipc must be >= 1"):
        make("random", digits_small, 0, cache)


# ------------------------------------------------------------------------------------------------- random


def test_random_picks_distinct_real_images_of_each_class(digits_small, cache):
    ipc = 5
    images = make("random", digits_small, ipc, cache).distill().images
    for c in range(10):
        rows = [row_of(digits_small, img) for img in images[c * ipc : (c + 1) * ipc]]
        assert all(r >= 0 for r in rows)
        assert len(set(rows)) == ipc
        assert all(int(digits_small.train.labels[r]) == c for r in rows)


# ------------------------------------------------------------------------------------------------ herding


def test_herding_first_pick_is_closest_to_the_class_mean(digits_small, cache, features):
    images = make("herding", digits_small, 1, cache).distill().images
    for c in range(10):
        rows = class_rows(digits_small, c)
        f = features[rows]
        closest = rows[(f - f.mean(0)).norm(dim=1).argmin()]
        assert torch.equal(images[c], digits_small.train.images[closest])


def test_herding_matches_the_feature_mean_better_than_random(digits_small, cache, features):
    ipc = 5
    herding = make("herding", digits_small, ipc, cache)
    result = herding.distill()
    gen = torch.Generator().manual_seed(0)
    herd_gap, random_gap = [], []
    for c in range(10):
        rows = class_rows(digits_small, c)
        f = features[rows]
        picks = herding.select(f)
        assert len(set(picks.tolist())) == ipc
        assert torch.equal(result.images[c * ipc : (c + 1) * ipc], digits_small.train.images[rows[picks]])
        herd_gap.append(float((f[picks].mean(0) - f.mean(0)).norm()))
        subsets = [torch.randperm(len(f), generator=gen)[:ipc] for _ in range(20)]
        random_gap.append(sum(float((f[s].mean(0) - f.mean(0)).norm()) for s in subsets) / len(subsets))
    assert sum(herd_gap) < 0.75 * sum(random_gap)
    assert all(h < r for h, r in zip(herd_gap, random_gap))


# ----------------------------------------------------------------------------------------------- k-center


def test_kcenter_picks_distinct_farthest_points(digits_small, cache, features):
    ipc = 6
    kcenter = make("kcenter", digits_small, ipc, cache)
    for c in range(3):
        f = features[class_rows(digits_small, c)]
        picks = kcenter.select(f).tolist()
        assert len(picks) == ipc and len(set(picks)) == ipc
        dist = torch.cdist(f, f)
        assert picks[1] == int(dist[picks[0]].argmax())
        # every later pick maximizes the distance to the nearest already chosen point
        for k in range(2, ipc):
            nearest = dist[picks[:k]].min(dim=0).values
            assert float(nearest[picks[k]]) == pytest.approx(float(nearest.max()), rel=1e-5)


def test_kcenter_output_is_made_of_real_images(digits_small, cache):
    ipc = 3
    images = make("kcenter", digits_small, ipc, cache).distill().images
    for c in range(10):
        rows = [row_of(digits_small, img) for img in images[c * ipc : (c + 1) * ipc]]
        assert len(set(rows)) == ipc and all(int(digits_small.train.labels[r]) == c for r in rows)


# ------------------------------------------------------------------------------------------ embeddings cache


def test_embeddings_are_trained_once_and_shared(digits_small, tmp_path):
    cache = Cache(tmp_path)
    first = make("herding", digits_small, 2, cache).distill()
    files = list((tmp_path / "embeddings").glob("*.safetensors"))
    assert len(files) == 1
    written = files[0].stat().st_mtime_ns

    again = make("herding", digits_small, 2, cache).distill()
    make("kcenter", digits_small, 2, cache).distill()  # same model, epochs and seed: the same embedding
    assert torch.equal(first.images, again.images)
    assert list((tmp_path / "embeddings").glob("*.safetensors")) == files
    assert files[0].stat().st_mtime_ns == written  # read, not trained and written again

    make("herding", digits_small, 2, cache, options={"embed_epochs": 2}).distill()
    assert len(list((tmp_path / "embeddings").glob("*.safetensors"))) == 2


def test_the_embedding_network_recipe():
    recipe = embedding_recipe(3)
    assert (recipe.epochs, recipe.lr, recipe.batch_size, recipe.schedule, recipe.augment) == (
        3, 0.01, 256, "constant", "none")
    assert (recipe.optimizer, recipe.momentum, recipe.weight_decay) == ("sgd", 0.9, 5e-4)


# ----------------------------------------------------------------------------------------------------- DM


def dm_objective(splits, images: torch.Tensor, ipc: int, nets: int = 4) -> float:
    """Σ_c ||mean φ(real_c) − mean φ(syn_c)||² over all real images, averaged over fixed random embedders."""
    total = 0.0
    for seed in range(nets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + seed)
            net = create_model(MODEL["name"], 1, 10, 16, width=MODEL["width"]).train()
        with torch.no_grad():
            real = torch.stack([net.embed(splits.train.class_images(c)).mean(0) for c in range(10)])
            syn = net.embed(images).view(10, ipc, -1).mean(1)
        total += float((real - syn).pow(2).sum())
    return total / nets


def test_dm_lowers_the_distribution_gap(digits_small, cache):
    ipc = 2
    # DM starts from real images: the same draw as the random baseline with the same seed
    init = make("random", digits_small, ipc, cache, seed=0).distill().images
    result = make("dm", digits_small, ipc, cache, seed=0, options={"iterations": 8, "batch_real": 8},
                  augment={"enabled": False}).distill()
    assert bool(torch.isfinite(result.images).all())
    assert not torch.allclose(result.images, init)
    before, after = dm_objective(digits_small, init, ipc), dm_objective(digits_small, result.images, ipc)
    assert after < 0.8 * before
    assert torch.isfinite(torch.tensor(result.meta["final_loss"]))


def test_dm_noise_init(digits_small, cache):
    result = make("dm", digits_small, 1, cache, options={"iterations": 2, "batch_real": 4, "init": "noise"}).distill()
    assert result.images.shape == (10, 1, 16, 16) and bool(torch.isfinite(result.images).all())
    assert all(row_of(digits_small, img) == -1 for img in result.images)
