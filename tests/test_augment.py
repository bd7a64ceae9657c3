"""DSA: replay, Siamese draws, gradients, parameter ranges and per-op semantics vs loop references."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.augment import DSA, DSADraw, DSAParams
from ddbench.augment.dsa import VALID_OPS, _warp
from ddbench.utils import DDBenchError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed)) * 2.0 - 1.0


def force(draw: DSADraw, op_names) -> DSADraw:
    """The same draw with each group's op replaced by the given name(s)."""
    names = [op_names] * draw.groups if isinstance(op_names, str) else list(op_names)
    op = torch.tensor([draw.ops.index(n) for n in names], dtype=torch.long)
    return dataclasses.replace(draw, op=op)


# ----------------------------------------------------------------- loop references
def _p(draw: DSADraw, field: str, b: int, batch: int):
    """Parameter of sample b of a batch of `batch` (per-sample or per-group draw)."""
    t = getattr(draw, field)
    return t[b] if draw.per_sample else t[b // (batch // draw.groups)]


def ref_one(x: torch.Tensor, b: int, name: str, draw: DSADraw) -> torch.Tensor:
    """The spec, written plainly, for sample b of x [B,C,H,W] → [C,H,W]."""
    B, C, H, W = x.shape
    xi = x[b]
    if name == "color":
        y = xi + float(_p(draw, "brightness", b, B))
        m = y.mean(dim=0, keepdim=True)
        y = (y - m) * float(_p(draw, "saturation", b, B)) + m
        m = y.mean()
        return (y - m) * float(_p(draw, "contrast", b, B)) + m
    if name == "crop":
        dy, dx = (int(v) for v in _p(draw, "crop", b, B))
        out = torch.zeros_like(xi)
        for i in range(H):
            for j in range(W):
                if 0 <= i + dy < H and 0 <= j + dx < W:
                    out[:, i, j] = xi[:, i + dy, j + dx]
        return out
    if name == "cutout":
        cy, cx = (int(v) for v in _p(draw, "cutout_center", b, B))
        kh, kw = draw.cutout_size
        mask = torch.ones(H, W)
        for i in range(kh):
            for j in range(kw):
                r = min(max(cy - kh // 2 + i, 0), H - 1)
                c = min(max(cx - kw // 2 + j, 0), W - 1)
                mask[r, c] = 0.0
        return xi * mask
    if name == "flip":
        return xi.flip(-1) if bool(_p(draw, "flip", b, B)) else xi
    if name in ("scale", "rotate"):
        if name == "scale":
            sx, sy = (float(v) for v in _p(draw, "scale", b, B))
            theta = torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
        else:
            a = float(_p(draw, "angle", b, B))
            theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        grid = F.affine_grid(theta[None], [1, C, H, W], align_corners=True)
        return F.grid_sample(xi[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    raise AssertionError(name)


def reference(x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
    B = x.shape[0]
    per_group = B // draw.groups
    return torch.stack([ref_one(x, b, draw.ops[int(draw.op[b // per_group])], draw) for b in range(B)])


# ----------------------------------------------------------------- tests
def test_replay_is_bit_identical_and_deterministic_per_seed():
    dsa = DSA()
    x = images(8)
    for seed in range(6):
        draw = dsa.sample(tuple(x.shape), gen(seed), groups=2)
        assert torch.equal(dsa.apply(x, draw), dsa.apply(x, draw))
    assert torch.equal(dsa(x, gen(3), groups=2), dsa(x, gen(3), groups=2))
    outs = [dsa(x, gen(s), groups=2) for s in range(4)]
    assert all(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", OPS)
def test_siamese_draw_replays_on_other_batch_sizes(name):
    dsa = DSA()
    one = images(1, seed=1)
    draw = force(dsa.sample((2, 3, 16, 16), gen(5), groups=1, per_sample=False), name)
    small = dsa.apply(one.expand(2, -1, -1, -1).contiguous(), draw)
    large = dsa.apply(one.expand(5, -1, -1, -1).contiguous(), draw)
    assert torch.equal(small[0], small[1])
    for k in range(5):
        assert torch.equal(large[k], small[0])
    assert not torch.equal(small[0], one[0]) or name == "flip"  # flip may draw "no flip"

    # two groups (e.g. two classes): 1 sample per group vs 5 samples per group
    a, b = images(1, seed=2), images(1, seed=3)
    draw = force(dsa.sample((2, 3, 16, 16), gen(6), groups=2, per_sample=False), [name, name])
    small = dsa.apply(torch.cat([a, b]), draw)
    large = dsa.apply(torch.cat([a.expand(5, -1, -1, -1), b.expand(5, -1, -1, -1)]), draw)
    assert torch.allclose(large[:5], small[0].expand(5, -1, -1, -1), atol=1e-6)
    assert torch.allclose(large[5:], small[1].expand(5, -1, -1, -1), atol=1e-6)
    torch.testing.assert_close(large, reference(torch.cat([a.expand(5, -1, -1, -1), b.expand(5, -1, -1, -1)]), draw), atol=1e-5, rtol=0)


def test_per_sample_draw_rejects_other_batch_size():
    dsa = DSA()
    draw = dsa.sample((4, 3, 16, 16), gen(), groups=2, per_sample=True)
    with pytest.raises(DDBenchError):
        dsa.apply(images(6), draw)
    with pytest.raises(DDBenchError):
        dsa.apply(images(4, h=8, w=8), draw)
    with pytest.raises(DDBenchError):
        dsa.sample((5, 3, 16, 16), gen(), groups=2)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("name", OPS)
def test_each_op_matches_loop_reference(name, per_sample):
    dsa = DSA()
    x = images(6, seed=4)
    for seed in range(3):
        draw = force(dsa.sample(tuple(x.shape), gen(seed), groups=3, per_sample=per_sample), name)
        out = dsa.apply(x, draw)
        torch.testing.assert_close(out, reference(x, draw), atol=1e-5, rtol=0)


def test_single_channel_color_and_non_square_crop_cutout():
    dsa = DSA()
    x = images(4, c=1, h=12, w=20, seed=9)
    for name in ("color", "crop", "cutout", "flip"):
        draw = force(dsa.sample(tuple(x.shape), gen(1), groups=2), name)
        assert draw.cutout_size == (6, 10)
        torch.testing.assert_close(dsa.apply(x, draw), reference(x, draw), atol=1e-5, rtol=0)


def test_mode_s_one_op_per_group_and_all_ops_drawn():
    dsa = DSA()
    x = images(8, seed=7)
    seen = set()
    for seed in range(40):
        draw = dsa.sample(tuple(x.shape), gen(seed), groups=4)
        assert draw.op.shape == (4,) and draw.op.dtype == torch.long
        seen.update(int(v) for v in draw.op)
        if seed < 6:  # each group gets exactly its own op (no composition, no leakage)
            torch.testing.assert_close(dsa.apply(x, draw), reference(x, draw), atol=1e-5, rtol=0)
    assert seen == set(range(6))
    # a sample whose group drew a non-geometric op is untouched by the shared warp
    draw = force(dsa.sample(tuple(x.shape), gen(0), groups=4), ["crop", "cutout", "rotate", "color"])
    out = dsa.apply(x, draw)
    assert torch.equal(out[2:4], reference(x, draw)[2:4])  # cutout: x * {0,1} mask, bit-exact


def test_strategy_subset_uses_only_its_ops():
    dsa = DSA("crop_flip")
    assert dsa.ops == ("crop", "flip")
    x = images(4)
    seen = set()
    for seed in range(20):
        draw = dsa.sample(tuple(x.shape), gen(seed), groups=2)
        seen.update(int(v) for v in draw.op)
        torch.testing.assert_close(dsa.apply(x, draw), reference(x, draw), atol=1e-5, rtol=0)
    assert seen == {0, 1}


@pytest.mark.parametrize("name", OPS)
def test_gradients_reach_input(name):
    dsa = DSA()
    x = images(4, seed=8).requires_grad_(True)
    draw = force(dsa.sample(tuple(x.shape), gen(2), groups=2), name)
    w = torch.randn(x.shape, generator=gen(11))
    (g_dsa,) = torch.autograd.grad((dsa.apply(x, draw) * w).sum(), x)
    (g_ref,) = torch.autograd.grad((reference(x, draw) * w).sum(), x)
    assert g_dsa.abs().sum() > 0
    torch.testing.assert_close(g_dsa, g_ref, atol=1e-4, rtol=0)
    x.grad = None
    dsa(x, gen(3)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parameter_ranges():
    dsa = DSA()
    n = 4000
    d32 = dsa.sample((n, 3, 32, 32), gen(1))
    assert d32.crop.dtype == torch.long and d32.crop.shape == (n, 2)
    for axis in range(2):  # dy (rows) and dx (columns) each cover randint[-4, 4] inclusive
        assert set(d32.crop[:, axis].tolist()) == set(range(-4, 5))
    assert d32.cutout_size == (16, 16)
    for axis in range(2):  # randint[0, 32 + 1 - 16 % 2)
        assert d32.cutout_center[:, axis].min() == 0 and d32.cutout_center[:, axis].max() == 32
    lo, hi = 1 / 1.2, 1.2
    assert d32.scale.min() >= lo and d32.scale.max() <= hi
    assert d32.scale.min() < lo + 0.01 and d32.scale.max() > hi - 0.01
    deg = d32.angle * 180 / math.pi
    assert deg.abs().max() <= 15.0 + 1e-4 and deg.min() < -14.8 and deg.max() > 14.8
    assert abs(d32.flip.float().mean().item() - 0.5) < 0.04
    assert d32.brightness.min() >= -0.5 and d32.brightness.max() < 0.5 and d32.brightness.min() < -0.49
    assert d32.saturation.min() >= 0.0 and d32.saturation.max() < 2.0 and d32.saturation.max() > 1.98
    assert d32.contrast.min() >= 0.5 and d32.contrast.max() < 1.5
    assert d32.op.min() >= 0 and d32.op.max() <= 5

    d28 = dsa.sample((n, 1, 28, 28), gen(2))
    assert d28.cutout_size == (14, 14)
    assert (d28.crop.amin(0) == -4).all() and (d28.crop.amax(0) == 4).all()
    d16 = dsa.sample((n, 3, 16, 16), gen(3))
    assert d16.cutout_size == (8, 8)
    assert (d16.crop.amin(0) == -2).all() and (d16.crop.amax(0) == 2).all()
    d30 = dsa.sample((n, 3, 30, 30), gen(4))  # odd cutout side 15: centres in [0, 29]
    assert d30.cutout_size == (15, 15) and (d30.cutout_center.amax(0) == 29).all()

    custom = DSA(params=DSAParams(rotate=5.0, scale=1.5)).sample((n, 3, 16, 16), gen(5))
    assert (custom.angle * 180 / math.pi).abs().max() <= 5.0 + 1e-4
    assert custom.scale.min() >= 1 / 1.5 and custom.scale.max() <= 1.5 and custom.scale.max() > 1.45

    siamese = dsa.sample((12, 3, 16, 16), gen(6), groups=3, per_sample=False)
    assert siamese.brightness.shape == (3,) and siamese.crop.shape == (3, 2) and siamese.op.shape == (3,)


def test_integer_shifts_and_flip_are_exact_through_grid_sample():
    x = torch.rand(3, 2, 32, 32, generator=gen(12))
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            theta = torch.tensor([[1.0, 0.0, dx * 2 / 31], [0.0, 1.0, dy * 2 / 31]]).expand(3, 2, 3)
            expect = torch.zeros_like(x)
            rs, cs = slice(max(0, -dy), min(32, 32 - dy)), slice(max(0, -dx), min(32, 32 - dx))
            expect[:, :, rs, cs] = x[:, :, rs.start + dy : rs.stop + dy, cs.start + dx : cs.stop + dx]
            torch.testing.assert_close(_warp(x, theta), expect, atol=1e-5, rtol=0)
    flip = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    torch.testing.assert_close(_warp(x, flip), x.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(_warp(x, torch.eye(2, 3).expand(3, 2, 3)), x, atol=1e-6, rtol=0)


def test_disabled_or_none_is_identity():
    x = images(4)
    for dsa in (DSA(enabled=False), DSA("none"), DSA("")):
        assert dsa.ops == ()
        assert dsa(x, gen()) is x
        assert dsa.apply(x, dsa.sample(tuple(x.shape), gen())) is x
    assert not torch.equal(DSA()(x, gen()), x)


def test_unknown_op_names_valid_ops():
    with pytest.raises(DDBenchError) as err:
        DSA("color_warp")
    for name in VALID_OPS:
        assert name in str(err.value)
    assert "warp" in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_on_generator_device_without_host_syncs():
    dsa = DSA()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = images(8).cuda()
    draw = dsa.sample(tuple(x.shape), g, groups=4)
    assert draw.op.device.type == "cuda" and draw.scale.device.type == "cuda"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = dsa.apply(x, draw)
        out2 = dsa(x, g, groups=4, per_sample=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_draw = dataclasses.replace(
        draw, **{f.name: getattr(draw, f.name).cpu() for f in dataclasses.fields(draw) if torch.is_tensor(getattr(draw, f.name))}
    )
    torch.testing.assert_close(out.cpu(), dsa.apply(x.cpu(), cpu_draw), atol=1e-5, rtol=0)
    assert out2.shape == x.shape
