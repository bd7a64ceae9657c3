"""Memory-bounded forwards: chunked class means equal the unchunked ones (values and gradients), chunk plans
respect the budget, and a DM step on a 200-class 64 px dataset stays under its memory budget on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddbench.augment import DSA
from ddbench.data import DatasetInfo, Splits
from ddbench.data.tensors import ClassTensors
from ddbench.cache import Cache
from ddbench.methods import create_method, method_options
from ddbench.models import create_model
from ddbench.training.chunked import ChunkPlan, Footprint, augmented_forward, batch_coupled, class_means, memory_budget
from ddbench.utils import DDBenchError, reset_rss_peak, rss_peak_bytes

CPU = torch.device("cpu")
MiB = 2**20


def dm_loss(net, dsa, real_source, rows, syn, n_classes, real_rows, syn_rows, generator):
    """Σ_c ||mean φ(A(real_c)) − mean φ(A(syn_c))||² with one Siamese draw per class, chunked as asked."""
    draw = dsa.sample((len(rows), *syn.shape[1:]), generator, groups=n_classes, per_sample=False)
    real_labels = torch.arange(n_classes).repeat_interleave(len(rows) // n_classes)
    syn_labels = torch.arange(n_classes).repeat_interleave(len(syn) // n_classes)
    with torch.no_grad():
        real = class_means(augmented_forward(net.embed, dsa, draw, len(rows), real_source), rows, real_labels, n_classes, real_rows)
    fake = class_means(augmented_forward(net.embed, dsa, draw, len(syn)), syn, syn_labels, n_classes, syn_rows)
    return (real - fake).pow(2).sum()


@pytest.mark.parametrize("strategy", ["none", "color_crop_cutout_flip_scale_rotate"])
def test_chunked_dm_loss_and_image_gradients_equal_unchunked_in_float64(strategy, one_thread):
    torch.manual_seed(0)
    n_classes, n_real, ipc = 3, 5, 4
    net = create_model("convnet", 3, n_classes, 8, width=8, depth=2).double()
    for p in net.parameters():
        p.requires_grad_(False)
    source = torch.randn(40, 3, 8, 8, dtype=torch.float64)
    rows = torch.randint(0, 40, (n_classes * n_real,))
    syn0 = torch.randn(n_classes * ipc, 3, 8, 8, dtype=torch.float64)
    dsa = DSA(strategy)
    results = []
    for real_rows, syn_rows in ((10**6, 10**6), (4, 5), (1, 1)):  # unchunked; chunks across class boundaries; rows
        syn = syn0.clone().requires_grad_(True)
        loss = dm_loss(net, dsa, source, rows, syn, n_classes, real_rows, syn_rows, torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss.detach(), syn.grad))
    (loss_ref, grad_ref), *chunked = results
    assert grad_ref.abs().sum() > 0
    for loss, grad in chunked:
        torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_class_means_of_unsorted_labels_match_a_per_class_loop():
    x = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 0, 2, 1])
    weights = torch.randn(3, 6, dtype=torch.float64)
    means = class_means(lambda chunk, s, e: chunk.tanh(), x, labels, 3, rows=2)
    (means * weights).sum().backward()
    expected_grad = torch.zeros_like(x)
    for c in range(3):
        x_c = x.detach()[labels == c].requires_grad_(True)
        torch.testing.assert_close(means[c].detach(), x_c.tanh().mean(0).detach())
        ((x_c.tanh().mean(0)) * weights[c]).sum().backward()
        expected_grad[labels == c] = x_c.grad
    torch.testing.assert_close(x.grad, expected_grad)


def test_rows_of_a_draw_replay_the_whole_draw():
    dsa = DSA()
    x = torch.randn(12, 3, 8, 8)
    generator = torch.Generator().manual_seed(1)
    for per_sample, groups in ((True, 1), (False, 4)):
        draw = dsa.sample(tuple(x.shape), generator, groups=groups, per_sample=per_sample)
        whole = dsa.apply(x, draw)
        for start, stop in ((0, 5), (5, 12), (7, 8)):
            torch.testing.assert_close(dsa.apply(x[start:stop], draw.rows(start, stop)), whole[start:stop])
    group_draw = dsa.sample((12, 3, 8, 8), generator, groups=4, per_sample=False)
    smaller = torch.randn(8, 3, 8, 8)  # a batch of another size replays the same per-group draw
    torch.testing.assert_close(dsa.apply(smaller[2:6], group_draw.rows(2, 6, 8)), dsa.apply(smaller, group_draw)[2:6])
    with pytest.raises(DDBenchError, match="rows"):
        group_draw.rows(4, 13)


def test_chunk_plan_respects_the_budget_and_never_splits_batch_statistics():
    net = create_model("convnet", 3, 10, 32, width=16)
    footprint = Footprint.measure(net, torch.randn(2, 3, 32, 32), call=net.embed)
    assert 0 < footprint.no_grad < footprint.grad
    # a forward of 16 channels x 32 x 32 floats in and out of the first conv: at least 2 x 64 KiB per sample
    assert footprint.no_grad >= 2 * 16 * 32 * 32 * 4
    budget = 40 * footprint.grad
    plan = ChunkPlan.make(footprint, budget, CPU, cache_bytes=0)  # 0: no cache limit
    assert plan.grad == 40 and plan.no_grad * footprint.no_grad <= budget < (plan.no_grad + 1) * footprint.no_grad
    cached = ChunkPlan.make(footprint, budget, CPU, cache_bytes=4 * footprint.no_grad)
    assert cached.no_grad == 4 and cached.grad == 40
    with pytest.raises(DDBenchError, match="memory_budget_mb"):
        ChunkPlan.make(footprint, footprint.grad - 1, CPU)
    bn = create_model("convnet_bn", 3, 10, 32, width=16).train()
    assert batch_coupled(bn) and not batch_coupled(net) and not batch_coupled(bn.eval())
    assert ChunkPlan.make(footprint, budget, CPU, coupled=True).no_grad >= 10**9
    assert memory_budget(CPU, 12.5) == int(12.5 * MiB) and memory_budget(CPU) > 0
    with pytest.raises(DDBenchError, match="memory_budget_mb"):
        memory_budget(CPU, 0)


def random_splits(n_classes: int, per_class: int, size: int, seed: int = 0) -> Splits:
    generator = torch.Generator().manual_seed(seed)
    info = DatasetInfo("random", 3, size, n_classes, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    labels = torch.arange(n_classes).repeat_interleave(per_class)

    def split() -> ClassTensors:
        return ClassTensors.from_unsorted(torch.randn(len(labels), 3, size, size, generator=generator), labels, n_classes)

    return Splits(info, split(), split())


def dm(splits, budget_mb, iterations=1, batch_real=4, model=None, cache=None, **options):
    options = {"iterations": iterations, "batch_real": batch_real, "memory_budget_mb": budget_mb, **options}
    return create_method("dm", splits=splits, ipc=1, seed=0, device=CPU, options=options,
                         model=model or {"name": "convnet", "width": 32}, augment={"enabled": True}, cache=cache)


def dm_step_peak_growth(n_classes: int, per_class: int, size: int, budget_mb: float) -> tuple[int, int] | None:
    """Peak RSS growth (bytes) of one DM step and the synthetic set's size (elements); None where RSS is unknown.

    Run in a fresh interpreter (see below): peak RSS belongs to the whole process, so the heap left by earlier
    tests in the same process (fragmentation, glibc's adaptive mmap threshold) would be measured with the step.
    """
    torch.set_num_threads(1)
    dm(random_splits(20, 1, size), budget_mb).distill()  # warm-up: the same chunk shapes load the same kernels
    method = dm(random_splits(n_classes, per_class, size), budget_mb)
    before = reset_rss_peak()
    if before is None:
        return None
    result = method.distill()
    assert result.images.shape == (n_classes, 3, size, size) and torch.isfinite(result.images).all()
    return rss_peak_bytes() - before, result.images.numel()


def test_dm_step_on_200_classes_at_64px_stays_under_the_memory_budget():
    budget_mb = 64
    net = create_model("convnet", 3, 200, 64, width=32)
    footprint = Footprint.measure(net, random_splits(2, 1, 64).train.images, call=net.embed)
    unchunked = 200 * 4 * footprint.no_grad + 200 * footprint.grad
    assert unchunked > 8 * budget_mb * MiB  # one batch of all classes would need far more than the budget
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_chunked; "
            f"print(json.dumps(test_chunked.dm_step_peak_growth(200, 4, 64, {budget_mb})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured is None:
        pytest.skip("peak RSS cannot be reset on this OS")
    grown, synthetic = measured
    # outside the budget: the synthetic images, their gradient, the momentum buffer and its update, the divergence
    # guard's last good copy and the new one (six image-sized tensors at the step's peak)
    state = 6 * synthetic * 4
    assert grown < budget_mb * MiB + state, f"peak RSS grew by {grown / MiB:.0f} MiB, over the {budget_mb} MiB budget"


def test_dm_chunked_and_unchunked_distil_the_same_images(one_thread):
    splits = random_splits(5, 6, 16, seed=1)
    model = {"name": "convnet", "width": 8}
    whole = dm(splits, 4096, iterations=2, batch_real=3, model=model).distill().images
    net = create_model("convnet", 3, 5, 16, width=8)
    footprint = Footprint.measure(net, splits.train.images[:2], call=net.embed)
    tight = 3 * footprint.grad / MiB  # three rows per chunk: chunks cut across classes on both sides
    chunked = dm(splits, tight, iterations=2, batch_real=3, model=model).distill().images
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_dm_memory_budget_option_is_validated_before_any_work():
    assert method_options("dm", {}).memory_budget_mb is None
    assert method_options("dm", {"memory_budget_mb": 12.5}).memory_budget_mb == 12.5
    for bad in (0, -3.0):
        with pytest.raises(DDBenchError, match=r"method.memory_budget_mb must be > 0"):
            method_options("dm", {"memory_budget_mb": bad})


def test_dm_resumes_a_chunked_run_under_another_budget(one_thread, tmp_path, monkeypatch):
    """The budget changes chunking only: a run stopped after a checkpoint resumes under another budget."""
    import ddbench.methods.dm as dm_module

    splits = random_splits(5, 6, 16, seed=2)
    model = {"name": "convnet", "width": 8}
    net = create_model("convnet", 3, 5, 16, width=8)
    tight = 3 * Footprint.measure(net, splits.train.images[:2], call=net.embed).grad / MiB
    cache = Cache(tmp_path)
    full = dm(splits, 4096, iterations=4, batch_real=3, model=model, cache=cache, resume="false").distill().images

    class Killed(Exception):
        pass

    original, calls = dm_module.class_means, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the real means of iteration 3, after the checkpoint at 2
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(dm_module, "class_means", dies)
    with pytest.raises(Killed):
        dm(splits, tight, iterations=4, batch_real=3, model=model, cache=cache, checkpoint_every=2).distill()
    monkeypatch.setattr(dm_module, "class_means", original)
    assert len(list((tmp_path / "checkpoints").glob("*.safetensors"))) == 1
    resumed = dm(splits, 4096, iterations=4, batch_real=3, model=model, cache=cache, checkpoint_every=2).distill()
    torch.testing.assert_close(resumed.images, full, rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "checkpoints").glob("*.safetensors"))
