"""The recover kit of CDA/INFER: BN-statistics loss, batched groups vs the per-group loop, crops, schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ddbench.methods.recover import (
    AugmentDraw,
    BNStatLoss,
    RecoverAugment,
    crop_boxes,
    forward_chunk,
    group_flip,
    group_roll,
    min_crop_scale,
    optimise,
    recover_loss,
    resized_crop,
)
from ddbench.models import create_model
from ddbench.utils import DDBenchError

pytestmark = pytest.mark.usefixtures("one_thread")


def with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode model whose BN layers hold non-trivial running statistics."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def small_teacher() -> nn.Module:
    torch.manual_seed(0)
    return with_running_stats(create_model("convnet_bn", 1, 10, 16, width=8))


def test_bn_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    conv1, bn1 = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
    conv2, bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    model = with_running_stats(nn.Sequential(conv1, bn1, nn.ReLU(), conv2, bn2))
    x = torch.randn(2 * 5, 1, 6, 6)  # two groups of five images
    bn = BNStatLoss(model, first_multiplier=10.0)
    bn.start(2)
    model(x)
    got = bn.value()

    def term(a: torch.Tensor, layer: nn.BatchNorm2d) -> torch.Tensor:
        mean = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).mean(1)
        var = ((a.permute(1, 0, 2, 3).reshape(a.shape[1], -1) - mean[:, None]) ** 2).mean(1)
        return math.sqrt(((var - layer.running_var) ** 2).sum()) + math.sqrt(((mean - layer.running_mean) ** 2).sum())

    with torch.no_grad():
        for g in range(2):
            xg = x[5 * g : 5 * g + 5]
            a1 = conv1(xg)
            a2 = conv2(F.relu(bn1(a1)))  # eval mode: bn1 normalises with its running statistics
            expected = 10 * term(a1, bn1) + term(a2, bn2)
            assert got[g].item() == pytest.approx(expected, rel=1e-5)


def test_bn_loss_needs_batchnorm():
    with pytest.raises(DDBenchError, match="no BatchNorm"):
        BNStatLoss(create_model("convnet", 1, 10, 16, width=8))


def test_batched_groups_give_the_per_group_loop_gradients():
    teacher = small_teacher()
    bn = BNStatLoss(teacher)
    gen = torch.Generator().manual_seed(1)
    g, b = 3, 4
    x = torch.randn(g, b, 1, 16, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 10, (g, b), generator=gen)
    draw = RecoverAugment(crop="cosine", jitter=4).draw(g, 16, 16, step=2, total=10, generator=gen)
    loss, per_group = recover_loss(teacher, bn, RecoverAugment.apply(x, draw), labels, r_bn=0.5)
    (batched,) = torch.autograd.grad(loss, x)
    for i in range(g):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        li, pi = recover_loss(teacher, bn, RecoverAugment.apply(xi, draw.select(i)), labels[i : i + 1], r_bn=0.5)
        (alone,) = torch.autograd.grad(li, xi)
        assert pi.item() == pytest.approx(per_group[i].item(), rel=1e-5)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-6)
    assert batched.abs().sum() > 0


def test_batched_optimisation_equals_one_group_at_a_time():
    """Without random augmentation the batched Adam run and G separate runs end at the same images."""
    teacher = small_teacher()
    bn = BNStatLoss(teacher)
    still = RecoverAugment(crop="none", jitter=0)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 5, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (3, 5), generator=gen)
    low, high = torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 2.0)
    kw = dict(iterations=4, lr=0.25, r_bn=0.01, augment=still, bounds=(low, high))
    batched = x0.clone()
    optimise(batched, lambda p: p, labels, teacher, bn, generator=gen, **kw)
    for i in range(3):
        alone = x0[i : i + 1].clone()
        optimise(alone, lambda p: p, labels[i : i + 1], teacher, bn, generator=gen, **kw)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.equal(batched, x0) and batched.min() >= -1.0 and batched.max() <= 2.0


@pytest.mark.parametrize("compose", ["leaf", "real_plus_ufc"])
def test_chunked_forwards_give_the_images_of_one_batch(compose):
    """Chunks of groups per forward (any size) replay the same draws and end at the same images and losses, with
    crops, flips, rolls and clamping, on the images themselves (CDA) and on real + UFC (INFER)."""
    teacher = small_teacher()
    bn = BNStatLoss(teacher)
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(5, 4, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (5, 4), generator=gen)
    bounds = (torch.full((1, 1, 1, 1), -1.5), torch.full((1, 1, 1, 1), 1.5))
    runs = {}
    for chunk in (None, 1, 2, 5):
        param = real.clone() if compose == "leaf" else torch.zeros(5, 1, 1, 16, 16)
        fn = (lambda p: p) if compose == "leaf" else (lambda p: real + p)
        last = optimise(param, fn, labels, teacher, bn, iterations=4, lr=0.25, r_bn=0.01,
                        augment=RecoverAugment(crop="cosine", flip=True, jitter=2),
                        generator=torch.Generator().manual_seed(7), bounds=bounds, chunk=chunk)
        runs[chunk] = (param, last)
    for chunk in (1, 2, 5):
        torch.testing.assert_close(runs[chunk][0], runs[None][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(runs[chunk][1], runs[None][1], rtol=1e-4, atol=1e-5)
    assert not torch.equal(runs[None][0], real if compose == "leaf" else torch.zeros_like(runs[None][0]))


def test_forward_chunk_rule():
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    assert forward_chunk(0, 10, cpu) == 3 and forward_chunk(0, 100, cpu) == 1 and forward_chunk(0, 4, cpu) == 8
    assert forward_chunk(0, 10, gpu) is None  # every group in one forward off the CPU
    assert forward_chunk(2, 10, cpu) == 2 and forward_chunk(2, 10, gpu) == 2


def test_curriculum_crop_schedule_values():
    assert min_crop_scale(0, 100, "cosine") == pytest.approx(1.0)
    assert min_crop_scale(50, 100, "cosine") == pytest.approx(0.08 + 0.92 * 0.5)
    assert min_crop_scale(25, 100, "cosine") == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert min_crop_scale(99, 100, "cosine") == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi * 0.99)) / 2)
    assert min_crop_scale(25, 100, "cosine", milestone=0.5) == pytest.approx(0.54)
    assert min_crop_scale(60, 100, "cosine", milestone=0.5) == pytest.approx(0.08)
    assert min_crop_scale(50, 100, "linear") == pytest.approx(0.54)
    assert min_crop_scale(49, 100, "step", milestone=0.5) == 1.0
    assert min_crop_scale(50, 100, "step", milestone=0.5) == pytest.approx(0.08)
    assert min_crop_scale(0, 100, "fixed") == pytest.approx(0.08)
    with pytest.raises(DDBenchError, match="method.crop"):
        min_crop_scale(0, 10, "spiral")


def test_resized_crop_matches_torchvision_per_group():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 2, 3, 16, 16, generator=gen)
    boxes = torch.tensor([[0, 0, 16, 16], [3, 5, 7, 9], [8, 1, 8, 15], [15, 15, 1, 1]])
    out = resized_crop(x, boxes)
    for g, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(x[g], top, left, h, w, [16, 16], antialias=True)
        torch.testing.assert_close(out[g], expected, rtol=1e-5, atol=1e-5)


def test_crop_boxes_fit_and_follow_the_scale_range():
    gen = torch.Generator().manual_seed(4)
    boxes = crop_boxes(500, 32, 32, (0.5, 1.0), gen)
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32) & (h >= 1) & (w >= 1)).all())
    area = (h * w) / (32 * 32)
    assert area.min() > 0.4 and area.max() <= 1.0  # rounding of h and w moves the area a little
    assert len({tuple(b) for b in boxes.tolist()}) > 100  # boxes differ between groups
    full = crop_boxes(20, 16, 16, (1.0, 1.0), gen)
    assert bool((full[:, 2:] <= 16).all())


def test_flip_and_roll_are_shared_inside_a_group_and_match_torch():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 2, 1, 8, 8, generator=gen)
    shifts = torch.tensor([[0, 0], [1, 3], [4, 2]])
    rolled = group_roll(x, shifts)
    flips = torch.tensor([True, False, True])
    flipped = group_flip(x, flips)
    for g in range(3):
        torch.testing.assert_close(rolled[g], torch.roll(x[g], tuple(shifts[g].tolist()), dims=(-2, -1)))
        torch.testing.assert_close(flipped[g], x[g].flip(-1) if flips[g] else x[g])
    draw = RecoverAugment(jitter=4).draw(50, 8, 8, 0, 10, gen)
    assert draw.shifts.min() >= 0 and draw.shifts.max() <= 4
    sym = RecoverAugment(jitter=4, symmetric_jitter=True).draw(200, 8, 8, 0, 10, gen)
    assert sym.shifts.min() < 0


def test_bad_augment_options_are_refused():
    with pytest.raises(DDBenchError, match="method.crop"):
        RecoverAugment(crop="zoom")
    with pytest.raises(DDBenchError, match="jitter"):
        RecoverAugment(jitter=-1)
    assert isinstance(RecoverAugment().draw(2, 8, 8, 0, 4, torch.Generator()), AugmentDraw)


def test_a_diverging_recover_loop_stops_with_a_clear_error():
    from ddbench.methods.base import DistillDiverged

    teacher = small_teacher()
    bn = BNStatLoss(teacher)
    x = torch.randn(2, 5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x[1, 0, 0, 0, 0] = float("nan")  # one bad pixel poisons the loss at the first step
    with pytest.raises(DistillDiverged, match="NaN/inf at step 0; lower method.lr"):
        optimise(x, lambda p: p, torch.zeros(2, 5, dtype=torch.long), teacher, bn, iterations=6, lr=0.1, r_bn=0.01,
                 augment=RecoverAugment(crop="none", jitter=0), generator=torch.Generator(), guard_every=3)
