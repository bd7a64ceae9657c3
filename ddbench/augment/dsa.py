"""Differentiable Siamese augmentation (DSA), mode 'S', batched and branch-free.

Per call each group of the batch draws ONE op among the strategy's ops; the op's
parameters are drawn per sample (or once per group with ``per_sample=False``).
All randomness comes from the torch.Generator passed in, on that generator's device.

Conventions (identical to the reference DSA):

* color:  x += b, b = (u-0.5)*brightness; x = (x-mean_C)*(u*saturation)+mean_C;
          x = (x-mean_CHW)*(u+contrast)+mean_CHW.
* crop:   output[i, j] = input[i + dy, j + dx] (zero outside), dy, dx ~ randint[-s, s],
          s = int(crop*size+0.5) per axis; dy moves along rows (H), dx along columns (W).
* cutout: rows clamp(cy - k//2 + i, 0, H-1), i < k (same for columns) are zeroed,
          k = int(cutout*size+0.5), cy ~ randint[0, H + 1 - k%2).
* flip:   output[..., j] = input[..., W-1-j] with probability ``flip``.
* scale / rotate: theta [[sx,0,0],[0,sy,0]] / [[cos,-sin,0],[sin,cos,0]] on normalized
          output coordinates, bilinear grid_sample, zero padding, align_corners=True.

crop, flip, scale and rotate share one per-sample affine matrix and one grid_sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

try:  # kornia >= 0.8.3 moved it; older releases only have kornia.utils
    from kornia.geometry import create_meshgrid
except ImportError:  # pragma: no cover
    from kornia.utils import create_meshgrid

from ddbench.utils import DDBenchError

VALID_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
_GEOMETRIC = ("crop", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """The reference DSA ranges."""

    crop: float = 0.125
    scale: float = 1.2
    rotate: float = 15.0
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip: float = 0.5


@dataclass
class DSADraw:
    """Everything one DSA call draws; ``apply`` replays it deterministically.

    N = batch if ``per_sample`` else ``groups``. Parameters of every op are drawn;
    only the op chosen by each group is applied to that group's samples.

    ops:           the strategy's op names (``op`` indexes into it); () means identity.
    op:            [G] long, index into ``ops`` of the op applied to each group.
    groups, per_sample, batch (B at sampling time), size ((H, W) at sampling time).
    brightness:    [N] additive shift.
    saturation:    [N] factor around the per-pixel channel mean.
    contrast:      [N] factor around the per-sample mean.
    crop:          [N, 2] long shifts (dy along H, dx along W).
    cutout_center: [N, 2] long centres (cy, cx); cutout_size: (kh, kw).
    flip:          [N] bool.
    scale:         [N, 2] (sx along W, sy along H).
    angle:         [N] rotation in radians.
    """

    ops: tuple[str, ...]
    op: torch.Tensor
    groups: int
    per_sample: bool
    batch: int
    size: tuple[int, int]
    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    crop: torch.Tensor
    cutout_center: torch.Tensor
    cutout_size: tuple[int, int]
    flip: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor

    def rows(self, start: int, stop: int, batch: int | None = None) -> "DSADraw":
        """The draw for rows start:stop of a [batch, C, H, W] batch (default: the sampled batch), as a per-sample
        draw: applying it to x[start:stop] gives rows start:stop of applying the whole draw to x."""
        batch = self.batch if batch is None else int(batch)
        if self.per_sample and batch != self.batch:
            raise DDBenchError(f"DSA: per-sample draw was sampled for a batch of {self.batch}, not {batch}.")
        if batch % self.groups or not 0 <= start < stop <= batch:
            raise DDBenchError(f"DSA: rows {start}:{stop} do not lie in a batch of {batch} split into {self.groups} groups.")
        index = torch.arange(start, stop, device=self.op.device)
        group = index // (batch // self.groups)
        params = index if self.per_sample else group

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[params.to(t.device)]

        return replace(
            self, op=self.op[group], groups=stop - start, per_sample=True, batch=stop - start,
            brightness=pick(self.brightness), saturation=pick(self.saturation), contrast=pick(self.contrast),
            crop=pick(self.crop), cutout_center=pick(self.cutout_center), flip=pick(self.flip),
            scale=pick(self.scale), angle=pick(self.angle),
        )


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """'color_crop' → ('color', 'crop'); 'none' / '' / None → ()."""
    text = (strategy or "").strip().lower()
    if text in ("", "none"):
        return ()
    ops = tuple(part for part in text.split("_") if part)
    unknown = [op for op in ops if op not in VALID_OPS]
    if unknown:
        raise DDBenchError(
            f"unknown DSA op(s) {unknown} in strategy {strategy!r}; valid ops are {', '.join(VALID_OPS)} "
            "joined by '_' (or 'none')."
        )
    return ops


class DSA:
    """Differentiable Siamese augmentation, mode 'S' (one op per group per call)."""

    def __init__(
        self,
        strategy: str = "color_crop_cutout_flip_scale_rotate",
        params: DSAParams = DSAParams(),
        enabled: bool = True,
    ) -> None:
        parsed = parse_strategy(strategy)
        self.strategy = strategy
        self.params = params
        self.enabled = bool(enabled) and bool(parsed)
        self.ops: tuple[str, ...] = parsed if self.enabled else ()

    def __repr__(self) -> str:
        return f"DSA(ops={self.ops!r}, params={self.params!r})"

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        x_shape: tuple[int, int, int, int],
        generator: torch.Generator,
        groups: int = 1,
        per_sample: bool = True,
    ) -> DSADraw:
        """Draw the op of each of ``groups`` contiguous chunks of a [B,C,H,W] batch, and all parameters."""
        B, _, H, W = (int(v) for v in x_shape)
        groups = int(groups)
        if groups < 1 or B % groups:
            raise DDBenchError(f"DSA: batch size {B} is not split into {groups} equal groups; pass groups dividing B.")
        p = self.params
        g = generator
        dev = g.device
        n = B if per_sample else groups

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=g, device=dev)

        def randint(low: int, high: int, *shape: int) -> torch.Tensor:
            return torch.randint(low, high, shape, generator=g, device=dev)

        n_ops = max(len(self.ops), 1)
        op = randint(0, n_ops, groups)
        brightness = (rand(n) - 0.5) * p.brightness
        saturation = rand(n) * p.saturation
        contrast = rand(n) + p.contrast
        sh, sw = int(H * p.crop + 0.5), int(W * p.crop + 0.5)
        crop = torch.stack([randint(-sh, sh + 1, n), randint(-sw, sw + 1, n)], dim=1)
        kh, kw = int(H * p.cutout + 0.5), int(W * p.cutout + 0.5)
        cutout_center = torch.stack([randint(0, H + (1 - kh % 2), n), randint(0, W + (1 - kw % 2), n)], dim=1)
        flip = rand(n) < p.flip
        scale = rand(n, 2) * (p.scale - 1.0 / p.scale) + 1.0 / p.scale
        angle = (rand(n) - 0.5) * 2.0 * p.rotate / 180.0 * math.pi
        return DSADraw(
            ops=self.ops,
            op=op,
            groups=groups,
            per_sample=bool(per_sample),
            batch=B,
            size=(H, W),
            brightness=brightness,
            saturation=saturation,
            contrast=contrast,
            crop=crop,
            cutout_center=cutout_center,
            cutout_size=(kh, kw),
            flip=flip,
            scale=scale,
            angle=angle,
        )

    # ------------------------------------------------------------------ applying
    def apply(self, x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
        """Apply a draw to x [B,C,H,W] → [B,C,H,W]; deterministic and differentiable w.r.t. x."""
        if not draw.ops:
            return x
        B, C, H, W = x.shape
        if (H, W) != tuple(draw.size):
            raise DDBenchError(f"DSA: draw was sampled for {draw.size[0]}x{draw.size[1]} images, got {H}x{W}.")
        if draw.per_sample and B != draw.batch:
            raise DDBenchError(
                f"DSA: per-sample draw was sampled for a batch of {draw.batch}, got {B}; "
                "sample with per_sample=False to replay on batches of another size."
            )
        if B % draw.groups:
            raise DDBenchError(f"DSA: batch size {B} is not split into {draw.groups} equal groups.")
        dev = x.device
        reps = B // draw.groups

        def spread(t: torch.Tensor) -> torch.Tensor:
            # [G, ...] → [B, ...], each group's row repeated for its samples (expand: no host sync)
            t = t.to(dev)
            return t.unsqueeze(1).expand(t.shape[0], reps, *t.shape[1:]).reshape(B, *t.shape[1:])

        op = spread(draw.op)  # [B]

        def per(t: torch.Tensor) -> torch.Tensor:
            return t.to(dev) if draw.per_sample else spread(t)

        def chosen(name: str) -> torch.Tensor:
            sel = torch.zeros(B, dtype=torch.bool, device=dev)
            for i, o in enumerate(draw.ops):
                if o == name:
                    sel = sel | (op == i)
            return sel

        out = x
        if "color" in draw.ops:
            sel = chosen("color").view(B, 1, 1, 1)
            colored = _color(x, per(draw.brightness), per(draw.saturation), per(draw.contrast))
            out = torch.where(sel, colored, out)

        geometric = [name for name in _GEOMETRIC if name in draw.ops]
        if geometric:
            theta = torch.eye(2, 3, device=dev, dtype=torch.float32).expand(B, 2, 3)
            any_sel = torch.zeros(B, dtype=torch.bool, device=dev)
            for name in geometric:
                sel = chosen(name)
                theta = torch.where(sel.view(B, 1, 1), self._theta(name, draw, per, H, W), theta)
                any_sel = any_sel | sel
            warped = _warp(out, theta)
            # samples whose group drew no geometric op keep x exactly (no resampling error)
            out = torch.where(any_sel.view(B, 1, 1, 1), warped, out)

        if "cutout" in draw.ops:
            sel = chosen("cutout").view(B, 1, 1)
            mask = _cutout_mask(per(draw.cutout_center), draw.cutout_size, H, W)
            mask = torch.where(sel, mask, torch.ones_like(mask)).to(out.dtype)
            out = out * mask.unsqueeze(1)
        return out

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, groups: int = 1, per_sample: bool = True
    ) -> torch.Tensor:
        """sample + apply: x [B,C,H,W] → augmented [B,C,H,W]."""
        if not self.ops:
            return x
        return self.apply(x, self.sample(tuple(x.shape), generator, groups=groups, per_sample=per_sample))

    @staticmethod
    def _theta(name: str, draw: DSADraw, per, H: int, W: int) -> torch.Tensor:
        """[B,2,3] affine matrix (normalized output coords → normalized input coords) of one op."""
        if name == "crop":
            shift = per(draw.crop).float()
            B = shift.shape[0]
            theta = torch.eye(2, 3, device=shift.device).repeat(B, 1, 1)
            theta[:, 0, 2] = shift[:, 1] * (2.0 / max(W - 1, 1))
            theta[:, 1, 2] = shift[:, 0] * (2.0 / max(H - 1, 1))
            return theta
        if name == "flip":
            flip = per(draw.flip)
            B = flip.shape[0]
            theta = torch.eye(2, 3, device=flip.device).repeat(B, 1, 1)
            theta[:, 0, 0] = 1.0 - 2.0 * flip.float()
            return theta
        if name == "scale":
            s = per(draw.scale)
            zero = torch.zeros_like(s[:, 0])
            return torch.stack(
                [torch.stack([s[:, 0], zero, zero], 1), torch.stack([zero, s[:, 1], zero], 1)], dim=1
            )
        if name == "rotate":
            a = per(draw.angle)
            cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
            return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], dim=1)
        raise DDBenchError(f"DSA: {name!r} is not a geometric op.")


def _color(x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Reference brightness → saturation → contrast on x [B,C,H,W]; params [B].

    Written in torch: kornia.enhance clamps outputs, works in HSV for saturation and
    scales contrast without centring on the mean, which differs from the reference.
    """
    view = (-1, 1, 1, 1)
    x = x + brightness.to(x.dtype).view(view)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * saturation.to(x.dtype).view(view) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * contrast.to(x.dtype).view(view) + m


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero-padded, align_corners=True resampling of x [B,C,H,W] by theta [B,2,3]."""
    _, _, H, W = x.shape
    base = create_meshgrid(H, W, normalized_coordinates=True, device=x.device, dtype=torch.float32)  # [1,H,W,2]
    gx, gy = base[..., 0], base[..., 1]
    t = theta.view(-1, 6, 1, 1)
    grid = torch.stack(
        [t[:, 0] * gx + t[:, 1] * gy + t[:, 2], t[:, 3] * gx + t[:, 4] * gy + t[:, 5]], dim=-1
    )  # [B,H,W,2]
    # torch grid_sample: kornia's warp_affine expects pixel-space matrices, the reference uses normalized ones.
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


def _cutout_mask(center: torch.Tensor, size: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """[B,H,W] mask: 0 inside the (border-clamped) square around center [B,2], 1 elsewhere."""
    kh, kw = size
    lo_r = (center[:, 0] - kh // 2).clamp(0, H - 1)
    hi_r = (center[:, 0] - kh // 2 + kh - 1).clamp(0, H - 1)
    lo_c = (center[:, 1] - kw // 2).clamp(0, W - 1)
    hi_c = (center[:, 1] - kw // 2 + kw - 1).clamp(0, W - 1)
    rows = torch.arange(H, device=center.device)
    cols = torch.arange(W, device=center.device)
    in_r = (rows >= lo_r[:, None]) & (rows <= hi_r[:, None])  # [B,H]
    in_c = (cols >= lo_c[:, None]) & (cols <= hi_c[:, None])  # [B,W]
    return (~(in_r[:, :, None] & in_c[:, None, :])).float()
