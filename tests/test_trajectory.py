"""Trajectory matching (MTT, FTD, DATM): loss, schedules, GSAM, EMA, soft labels, the low-memory unroll,
the expert cache, guard rails, checkpoints, and the smoke runs of the CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddbench.methods.experts as experts_mod
import ddbench.methods.trajectory as traj_mod
from ddbench.augment import DSA
from ddbench.cache import Cache
from ddbench.data import load_dataset
from ddbench.methods import create_method
from ddbench.methods.base import DistillDiverged
from ddbench.methods.experts import ExpertSpec, load_or_train_experts
from ddbench.training import FlatModel, gsam_gradient
from ddbench.methods import method_options
from ddbench.methods.loopkit import MomentumSGD
from ddbench.methods.trajectory import matching_loss, sample_start_epoch, start_epoch_bound
from ddbench.methods.unroll import Unroll, sample_rows, unroll_plain, unroll_recompute
from ddbench.models import create_model
from ddbench.utils import DDBenchError

CPU = torch.device("cpu")
TINY_MODEL = {"name": "convnet", "width": 8, "depth": 2}
TINY_EXPERTS = {"num_experts": 2, "epochs": 2, "batch_size": 50, "parallel": 2}



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", max_train_per_class=20, max_test_per_class=5)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tm-cache")


def tiny_options(**changes):
    options = {
        "experts": dict(TINY_EXPERTS), "iterations": 3, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2,
        "lr_img": 10.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "checkpoint_every": 0, "guard_every": 1, "log_every": 0,
    }
    options.update(changes)
    return options


def make(name, splits, cache_root, ipc=1, **changes):
    return create_method(name, splits=splits, ipc=ipc, seed=0, device=CPU, options=tiny_options(**changes),
                         model=TINY_MODEL, augment={"enabled": True}, cache=Cache(cache_root))


# ------------------------------------------------------------------------------------------- pieces


def test_matching_loss_is_normalised_by_the_expert_segment():
    start = torch.tensor([0.0, 0.0, 0.0])
    target = torch.tensor([1.0, 2.0, 0.0])  # ‖start − target‖² = 5
    student = torch.tensor([1.0, 0.0, 1.0])  # ‖student − target‖² = 0 + 4 + 1 = 5
    assert matching_loss(student, start, target).item() == pytest.approx(1.0)
    assert matching_loss(target, start, target).item() == 0.0
    assert matching_loss(start, start, target).item() == pytest.approx(1.0)  # not moving at all scores 1
    half = torch.tensor([0.5, 1.0, 0.0])
    assert matching_loss(half, start, target).item() == pytest.approx(0.25)
    # scale-free: multiplying every displacement by 10 keeps the loss
    assert matching_loss(10 * student, start, 10 * target).item() == pytest.approx(1.0)


def test_start_epoch_bound_and_window_growth():
    assert [start_epoch_bound(it, 20) for it in (0, 500, 10_000)] == [20, 20, 20]
    grown = [start_epoch_bound(it, 20, 10, 1000) for it in (0, 99, 100, 500, 999, 1000, 5000)]
    assert grown == [10, 10, 11, 15, 19, 20, 20]
    bounds = [start_epoch_bound(it, 50, 30, 2000) for it in range(0, 4000, 7)]
    assert bounds == sorted(bounds) and bounds[0] == 30 and bounds[-1] == 50
    # the sampler draws from [min_start, bound): never the bound itself
    gen = torch.Generator().manual_seed(0)
    for it in (0, 300, 1000):
        hi = start_epoch_bound(it, 20, 10, 1000)
        draws = torch.randint(2, hi, (4000,), generator=gen)
        assert int(draws.min()) == 2 and int(draws.max()) == hi - 1


def test_start_epochs_of_the_loop_stay_in_the_growing_window():
    options = method_options("datm", {"sequential_generation": True, "min_start_epoch": 1, "max_start_epoch": 6,
                                      "current_max_start_epoch": 3, "expansion_end": 4})
    gen = torch.Generator().manual_seed(0)
    for it, bound in ((0, 3), (1, 3), (2, 4), (3, 5), (4, 6), (9, 6)):
        draws = torch.cat([sample_start_epoch(it, 1, 6, options.window(), gen) for _ in range(200)])
        assert set(draws.tolist()) == set(range(1, bound))


def test_expert_epochs_must_cover_the_start_window(splits, cache_root):
    with pytest.raises(DDBenchError, match="experts.epochs"):
        make("mtt", splits, cache_root, max_start_epoch=3, expert_epochs=1).distill()


def test_gsam_direction_matches_a_hand_computation_on_a_quadratic():
    # L(w) = ½ Σ a_i w_i², ∇L = a ⊙ w; one model (row), adaptive GSAM with rho 0.1, alpha 0.5.
    a = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    g = a * w  # [1, -2]
    # adaptive: norm = ‖|w| ⊙ g‖ = ‖[1, -2]‖ = √5; e = ρ·w²⊙g/√5 = 0.1·[1, -2]/√5
    s5 = 5 ** 0.5
    e = [0.1 * 1 / s5, 0.1 * -2 / s5]
    gp = [1.0 * (1 + e[0]), 2.0 * (-1 + e[1])]
    inner = g[0, 0].item() * gp[0] + g[0, 1].item() * gp[1]
    gp_norm = (gp[0] ** 2 + gp[1] ** 2) ** 0.5
    g_norm = s5
    cos = inner / (gp_norm * g_norm)
    vertical = [g[0, i].item() - cos * g_norm * gp[i] / gp_norm for i in range(2)]
    expected = torch.tensor([[gp[i] - 0.5 * vertical[i] for i in range(2)]], dtype=torch.float64)
    got = gsam_gradient(w, g, lambda v: a * v, rho=0.1, alpha=0.5, adaptive=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # alpha 0 is plain SAM (the gradient at the perturbed point); rows are independent models
    rows = torch.cat([w, 2 * w])
    both = gsam_gradient(rows, a * rows, lambda v: a * v, rho=0.1, alpha=0.0, adaptive=True)
    torch.testing.assert_close(both[:1], torch.tensor([gp], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    alone = gsam_gradient(2 * w, a * 2 * w, lambda v: a * v, rho=0.1, alpha=0.0, adaptive=True)
    torch.testing.assert_close(both[1:], alone)


def test_momentum_sgd_matches_torch_and_skips_masked_steps():
    p, q = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0], requires_grad=True)
    ours, ref = MomentumSGD(0.1, 0.5), torch.optim.SGD([q], lr=0.1, momentum=0.5)
    for g in (torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])):
        ours.step(p, g)
        q.grad = g.clone()
        ref.step()
    torch.testing.assert_close(p, q.detach())
    before, buf = p.clone(), ours.buf.clone()
    ours.step(p, torch.tensor([9.0, 9.0]), mask=torch.tensor(False))
    assert torch.equal(p, before) and torch.equal(ours.buf, buf)


# ------------------------------------------------------------------------------------------- unroll


def _tiny_problem(soft: bool):
    torch.manual_seed(0)
    model = create_model("convnet", 1, 4, 8, width=4, depth=2).double()
    flat = FlatModel(model)
    gen = torch.Generator().manual_seed(1)
    n, steps, batch = 8, 4, 4
    images = torch.randn(n, 1, 8, 8, dtype=torch.float64)
    labels = torch.randn(n, 4, dtype=torch.float64) if soft else torch.arange(4).repeat_interleave(2)
    theta0 = flat.flatten(model).double()
    target = theta0 + 0.01 * torch.randn_like(theta0)
    dsa = DSA()
    rows = sample_rows(n, batch, steps, gen)
    draw = dsa.sample((steps * batch, 1, 8, 8), gen, groups=steps)
    return Unroll(flat, rows, dsa, draw), theta0, target, images, labels


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_recompute_unroll_gives_the_plain_gradients(soft):
    u, theta0, target, images, labels = _tiny_problem(soft)
    results = []
    for unroll in (unroll_plain, unroll_recompute):
        x = images.clone().requires_grad_(True)
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        y = labels.clone().requires_grad_(soft)
        final = unroll(u, theta0.clone().requires_grad_(True), x, lr, y)
        loss = matching_loss(final, theta0, target)
        results.append((loss.detach(), *torch.autograd.grad(loss, [x, lr] + ([y] if soft else []))))
    for plain, low_memory in zip(*results):
        torch.testing.assert_close(low_memory, plain, atol=1e-10, rtol=1e-8)
    assert all(bool(r.abs().sum() > 0) for r in results[0][1:])  # gradients reach images, lr (and labels)


def test_sample_rows_are_permutations_per_full_batch():
    rows = sample_rows(6, 6, 3, torch.Generator().manual_seed(0))
    assert rows.shape == (3, 6)
    assert all(sorted(r.tolist()) == list(range(6)) for r in rows)
    chunks = sample_rows(6, 2, 3, torch.Generator().manual_seed(0))  # one permutation in 3 chunks
    assert sorted(chunks.flatten().tolist()) == list(range(6))


# ------------------------------------------------------------------------------------------- experts


def test_expert_cache_reuse_and_resume_of_a_partial_set(splits, tmp_path, expert_groups, caplog):
    trained = expert_groups
    cache = Cache(tmp_path)
    spec = ExpertSpec(**{**TINY_EXPERTS, "num_experts": 3})
    first = load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, cache, indices=[1])  # a killed job's leftovers
    assert trained == [[1]] and first.shape[:2] == (1, 3)
    with caplog.at_level(logging.INFO):
        full = load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, cache)
    assert trained == [[1], [0, 2]]  # only the missing experts were trained
    assert "reusing cached experts: 1 of 3" in caplog.text
    torch.testing.assert_close(full[1], first[0])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, cache)
    assert trained == [[1], [0, 2]] and "reusing cached experts: 3 of 3" in caplog.text
    assert torch.equal(again, full)
    # an expert's trajectory does not depend on which experts trained beside it
    alone = experts_mod.train_expert_group(splits, TINY_MODEL, spec, {}, [2], CPU)[0]
    torch.testing.assert_close(alone[0], full[2])
    # another recipe is another cache entry
    gsam = ExpertSpec(**{**TINY_EXPERTS, "num_experts": 1, "optimizer": "gsam", "gsam_alpha": 0.3})
    load_or_train_experts(splits, TINY_MODEL, gsam, {}, CPU, cache)
    assert trained[-1] == [0]


def test_concurrent_jobs_train_a_missing_expert_set_once(splits, tmp_path, expert_groups):
    import threading

    spec = ExpertSpec(**{**TINY_EXPERTS, "num_experts": 2})
    results = []

    def job():  # one sweep job: its own Cache on the shared folder
        results.append(load_or_train_experts(splits, TINY_MODEL, spec, {}, CPU, Cache(tmp_path)))

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(120)
    assert expert_groups == [[0, 1]]  # the second job waited and loaded the first job's experts
    assert len(results) == 2 and torch.equal(results[0], results[1])


# ------------------------------------------------------------------------------------------- methods


def test_ftd_artifact_holds_the_ema_of_the_images(splits, cache_root):
    experts = {**TINY_EXPERTS, "optimizer": "sgd"}
    # the initial set: one iteration whose update is skipped (a threshold below every loss)
    initial = make("mtt", splits, cache_root, iterations=1, experts=experts, threshold=1e-9).distill().images
    runs = [initial] + [make("mtt", splits, cache_root, iterations=k, experts=experts).distill().images for k in (1, 2)]
    d = 0.9
    ema = make("ftd", splits, cache_root, iterations=2, experts=experts, ema_decay=d).distill()
    expected = d * d * runs[0] + d * (1 - d) * runs[1] + (1 - d) * runs[2]
    torch.testing.assert_close(ema.images, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(runs[2], runs[0])
    assert ema.meta["ema_decay"] == d


def test_datm_learns_soft_labels(splits, cache_root):
    method = make("datm", splits, cache_root, iterations=3, threshold=100.0, lr_y=50.0)
    result = method.distill()
    n = method.info.num_classes
    assert result.labels.dtype == torch.float32 and result.labels.shape == (n, n)
    assert result.lr is not None and float(result.lr) > 0
    # a threshold below every loss skips every update: the run returns its initial images and labels
    initial = make("datm", splits, cache_root, iterations=1, threshold=1e-9).distill()
    assert not torch.equal(initial.images, result.images)
    assert (result.labels - initial.labels).abs().max() > 1e-4  # the labels moved: gradients reach them
    assert initial.labels.dtype == torch.float32 and initial.labels.shape == (n, n)
    frozen = make("datm", splits, cache_root, iterations=2, threshold=1e-9).distill()
    assert torch.equal(frozen.labels, initial.labels) and torch.equal(frozen.images, initial.images)


def test_guard_rail_names_the_iteration_and_keeps_the_last_good_state(splits, cache_root, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = traj_mod.matching_loss

    def poisoned(student, start, target):
        calls["n"] += 1
        loss = original(student, start, target)
        return loss * float("nan") if calls["n"] == 3 else loss  # iteration 2 makes lr and images NaN

    monkeypatch.setattr(traj_mod, "matching_loss", poisoned)
    method = make("mtt", splits, cache_root, iterations=5, guard_every=2)
    with pytest.raises(DistillDiverged, match="iteration 2") as info:
        method.distill()
    good = info.value.result
    assert good is not None and good.meta["iteration"] == 1
    assert torch.isfinite(good.images).all() and float(good.lr) > 0
    calls["n"] = 0
    reference = make("mtt", splits, cache_root, iterations=2).distill()
    torch.testing.assert_close(good.images, reference.images)

    # through the pipeline: no record, the last good artifact on disk
    from ddbench import pipeline
    from ddbench.artifact import load_artifact

    calls["n"] = 0
    cfg = {"method": {"name": "mtt", **tiny_options(iterations=5, guard_every=2)}, "ipc": 1, "seed": 0,
           "model": TINY_MODEL, "augment": {"enabled": True}, "paths": {"cache": str(cache_root), "output": str(tmp_path)}}
    with pytest.raises(DDBenchError, match="iteration 2"):
        pipeline.distill(cfg, splits, CPU)
    saved = load_artifact(tmp_path / "artifact_last_good")
    assert saved.meta["iteration"] == 1 and torch.isfinite(saved.images).all()


def test_checkpoint_resume_continues_the_same_run(splits, cache_root, monkeypatch):
    full = make("mtt", splits, cache_root, iterations=4).distill()

    class Killed(Exception):
        pass

    original = traj_mod.sample_rows
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # inside iteration 3, after the checkpoint at 2
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(traj_mod, "sample_rows", dies)
    with pytest.raises(Killed):
        make("mtt", splits, cache_root, iterations=4, checkpoint_every=2).distill()
    monkeypatch.setattr(traj_mod, "sample_rows", original)
    method = make("mtt", splits, cache_root, iterations=4, checkpoint_every=2)
    key_path = list((Path(cache_root) / "checkpoints").glob("*.safetensors"))
    assert len(key_path) == 1
    resumed = method.distill()
    torch.testing.assert_close(resumed.images, full.images)
    torch.testing.assert_close(resumed.lr, full.lr)
    assert not list((Path(cache_root) / "checkpoints").glob("*.safetensors"))  # removed once finished


# ------------------------------------------------------------------------------------------- CLI


def test_smoke_runs_of_every_trajectory_method(tmp_path):
    """ddbench-run method=M dataset=digits ipc=1 smoke=true for M in mtt, ftd, datm, then mtt again.

    Two runs at a time (the second pair reuses the first pair's experts: datm's smoke experts are ftd's).
    """
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # smoke-sized problems: threads only add contention

    def launch(i: int, name: str) -> subprocess.Popen:
        command = [
            str(bin_dir / "ddbench-run"), f"method={name}", "dataset=digits", "ipc=1", "smoke=true", "progress=false",
            f"paths.records={tmp_path / 'records'}", f"paths.cache={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / f'run{i}'}",
        ]
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    outputs = {}
    for pair in ([(0, "mtt"), (1, "ftd")], [(2, "datm"), (3, "mtt")]):
        running = [(i, name, launch(i, name)) for i, name in pair]
        for i, name, proc in running:
            text, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, text
            assert f"{name} | digits | ipc 1" in text
            outputs[i] = text
    assert "training 2 expert(s)" in outputs[0]
    assert "reusing cached experts: 2 of 2" in outputs[3] and "training 2 expert(s)" not in outputs[3]
    assert "reusing cached experts: 2 of 2" in outputs[2]  # the same GSAM experts as ftd's smoke run
    assert "soft labels" in outputs[2]
    assert len(list((tmp_path / "records").rglob("*.json"))) == 4


def test_ddbench_experts_trains_the_experts_ddbench_run_uses(tmp_path):
    """The experts CLI resolves the method's options the way a run does, so a run finds every expert cached."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    common = ["method=ftd", "dataset=digits", "smoke=true", "progress=false", f"paths.cache={tmp_path / 'cache'}"]
    experts = subprocess.run([str(bin_dir / "ddbench-experts"), *common, f"hydra.run.dir={tmp_path / 'experts'}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert experts.returncode == 0, experts.stdout + experts.stderr
    assert "training 2 expert(s)" in experts.stdout + experts.stderr
    run = subprocess.run([str(bin_dir / "ddbench-distill"), *common, "ipc=1", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert "reusing cached experts: 2 of 2" in text and "training" not in text.split("reusing cached experts")[1]
