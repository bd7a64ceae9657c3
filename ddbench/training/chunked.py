"""Memory-bounded forwards: per-class feature means of a large batch, computed in chunks under a memory budget.

Methods that match statistics of many classes at once (DM, attention matching, BN-statistics recovery) forward
batches whose activations outgrow a GPU as the class count grows. `class_means` forwards such a batch in chunks
of rows, adds the features of each chunk into per-class sums, and divides by the class counts, so the result is
the same as one big forward. With gradients, chunking is exact too: the forward runs without a graph, and the
backward recomputes one chunk at a time and pulls the incoming per-class gradient through it (two forwards, one
backward, memory of one chunk). Gradients reach the batch `x` only; network parameters are constants.

How many rows fit is estimated from one small probe forward (`Footprint.measure`): hooks on the leaf modules
record, per sample, the largest input+output pair plus one more output (the peak of a forward without a graph:
a layer's input, its output and a temporary) and the sum of all leaf inputs (what autograd keeps for the backward). The budget is a share of the free device memory on GPUs,
and a fixed number of bytes on CPUs; on CPUs, forwards without a graph also stay within a cache-sized chunk when
torch runs one thread (much faster than one large batch), or within CPU_THREADED_BYTES with several threads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ddbench.utils import DDBenchError

log = logging.getLogger(__name__)

MiB = 2**20
CPU_BUDGET_BYTES = 2048 * MiB  # the fixed budget on CPUs
GPU_FREE_SHARE = 0.8  # share of the free GPU memory (plus memory cached by torch) a chunk may use
CPU_CACHE_BYTES = 16 * MiB  # activations of one no-grad chunk on a CPU running one thread: stays in cache
CPU_THREADED_BYTES = 512 * MiB  # ... with several threads: each op is one parallel region whose threads must all
# meet, which on shared cores costs far more than cache misses, so fewer, larger chunks are faster
SAFETY = 1.25  # headroom for temporaries the leaf-module hooks do not see (functional ops, the allocator)

ChunkForward = Callable[[torch.Tensor, int, int], torch.Tensor]


def memory_budget(device: torch.device, budget_mb: float | None = None) -> int:
    """Bytes one chunked forward may use: `budget_mb` when given, else GPU_FREE_SHARE of what the GPU has free
    (including torch's cached, unused blocks), else CPU_BUDGET_BYTES on a CPU."""
    if budget_mb is not None:
        if not float(budget_mb) > 0:
            raise DDBenchError(f"memory_budget_mb must be a positive number of MiB, got {budget_mb!r}.")
        return int(float(budget_mb) * MiB)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(GPU_FREE_SHARE * (free + cached))
    return CPU_BUDGET_BYTES


def batch_coupled(model: nn.Module) -> bool:
    """Whether the rows of a batch influence each other's outputs (BatchNorm in training mode), which forbids
    chunking: such a model must see the whole batch at once."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


@dataclass(frozen=True)
class Footprint:
    """Activation bytes per sample: `no_grad` is the peak of a forward without a graph, `grad` what a forward
    with a graph keeps plus the peak of its backward."""

    no_grad: int
    grad: int

    @classmethod
    def measure(cls, model: nn.Module, sample: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "Footprint":
        """Probe `call(sample)` (default `model(sample)`) without a graph; sample [n, C, H, W] with n >= 2 for
        models with batch statistics. Returns bytes per sample, SAFETY included."""
        leaves = [m for m in model.modules() if not list(m.children())]
        pairs: list[int] = []
        inputs: list[int] = []
        outputs: list[int] = []

        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            size_in = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
            size_out = output.numel() * output.element_size() if isinstance(output, torch.Tensor) else 0
            pairs.append(size_in + size_out)
            inputs.append(size_in)
            outputs.append(size_out)

        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad():
                out = (call or model)(sample)
        finally:
            for h in handles:
                h.remove()
        n = sample.shape[0]
        size_out = out.numel() * out.element_size()
        size_in = sample.numel() * sample.element_size()
        peak = max(pairs + [size_in + size_out]) + max(outputs + [size_out])  # a layer's input and output + a temporary
        kept = sum(inputs) + size_out
        return cls(no_grad=int(SAFETY * peak / n), grad=int(SAFETY * (kept + 2 * peak) / n))


@dataclass(frozen=True)
class ChunkPlan:
    """Rows per chunk for forwards without (`no_grad`) and with (`grad`) a graph; `budget` in bytes."""

    no_grad: int
    grad: int
    budget: int

    @classmethod
    def make(
        cls,
        footprint: Footprint,
        budget: int,
        device: torch.device,
        coupled: bool = False,
        cache_bytes: int | None = None,
    ) -> "ChunkPlan":
        """The largest chunks under `budget`; on CPUs no-grad chunks also stay within `cache_bytes` (default:
        CPU_CACHE_BYTES with one torch thread, else CPU_THREADED_BYTES). A batch-coupled model is never chunked."""
        if cache_bytes is None:
            cache_bytes = CPU_CACHE_BYTES if torch.get_num_threads() == 1 else CPU_THREADED_BYTES
        if coupled:
            return cls(no_grad=2**62, grad=2**62, budget=budget)
        if footprint.grad > budget:
            raise DDBenchError(
                f"one sample needs about {footprint.grad / MiB:.1f} MiB of activations with gradients, more than the "
                f"memory budget of {budget / MiB:.1f} MiB; raise method.memory_budget_mb or use a smaller model."
            )
        no_grad = budget // max(footprint.no_grad, 1)
        if torch.device(device).type == "cpu" and cache_bytes > 0:
            no_grad = min(no_grad, max(cache_bytes // max(footprint.no_grad, 1), 1))
        return cls(no_grad=int(no_grad), grad=int(budget // max(footprint.grad, 1)), budget=budget)

    def rows(self) -> int:
        """Rows per chunk for a forward under the current grad mode."""
        return self.grad if torch.is_grad_enabled() else self.no_grad


def _chunks(total: int, rows: int) -> list[tuple[int, int]]:
    rows = max(int(rows), 1)
    return [(s, min(s + rows, total)) for s in range(0, total, rows)]


def _sum_by_class(forward: ChunkForward, x: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: int) -> torch.Tensor:
    """Σ over rows of each class of forward(x[s:e], s, e) → [K, D], one chunk at a time."""
    sums = None
    for s, e in _chunks(len(x), rows):
        features = forward(x[s:e], s, e).flatten(1)
        if sums is None:
            sums = features.new_zeros(num_classes, features.shape[1])
        sums = sums.index_add(0, labels[s:e], features) if features.requires_grad else sums.index_add_(0, labels[s:e], features)
    assert sums is not None
    return sums


def _counts(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows per class [K, 1] (at least 1, so an absent class has mean zero)."""
    return torch.bincount(labels, minlength=num_classes).clamp_min(1).to(dtype).unsqueeze(1)


class _RecomputedMeans(torch.autograd.Function):
    """Class means whose backward recomputes one chunk at a time (memory of one chunk, exact gradients)."""

    @staticmethod
    def forward(ctx, x, forward, labels, num_classes, rows):  # type: ignore[override]
        means = _sum_by_class(forward, x, labels, num_classes, rows)
        means = means / _counts(labels, num_classes, means.dtype)
        ctx.save_for_backward(x, labels)
        ctx.forward, ctx.num_classes, ctx.rows = forward, num_classes, rows
        return means

    @staticmethod
    def backward(ctx, grad_means):  # type: ignore[override]
        x, labels = ctx.saved_tensors
        per_row = grad_means / _counts(labels, ctx.num_classes, grad_means.dtype)  # d mean_c / d feature_i = 1/n_c
        grad_x = torch.zeros_like(x)
        for s, e in _chunks(len(x), ctx.rows):
            part = x[s:e].detach().requires_grad_(True)
            with torch.enable_grad():
                features = ctx.forward(part, s, e).flatten(1)
                (grad,) = torch.autograd.grad(features, part, per_row[labels[s:e]])
            grad_x[s:e] = grad
        return grad_x, None, None, None, None


def class_means(forward: ChunkForward, x: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: int) -> torch.Tensor:
    """Per-class mean of forward's features → [K, D], forwarding `rows` rows of x at a time.

    forward(x[s:e], s, e) → features [e-s, ...] (flattened to D); labels [N] int64 class of each row of x [N, ...].
    Under no_grad, or when one chunk holds all rows, the chunks are forwarded once; with gradients and several
    chunks, the backward recomputes each chunk (see the module docstring). Exact up to float rounding.
    """
    if len(x) != len(labels):
        raise DDBenchError(f"class_means: {len(x)} rows but {len(labels)} labels; give one label per row.")
    if torch.is_grad_enabled() and x.requires_grad and rows < len(x):
        return _RecomputedMeans.apply(x, forward, labels, num_classes, int(rows))
    sums = _sum_by_class(forward, x, labels, num_classes, rows)
    return sums / _counts(labels, num_classes, sums.dtype)


def augmented_forward(
    call: Callable[[torch.Tensor], torch.Tensor], dsa, draw, batch: int, source: torch.Tensor | None = None
) -> ChunkForward:
    """A `class_means` forward: call(A(rows)) with the rows' part of a Siamese DSA draw sampled for `batch` rows.

    With `source`, the chunk holds row indices into source [M, C, H, W] (gathered per chunk, so the whole batch
    is never materialised); else the chunk holds the images. dsa/draw None: no augmentation.
    """

    def forward(chunk: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        images = chunk if source is None else source[chunk]
        if draw is not None:
            images = dsa.apply(images, draw if (start, stop) == (0, batch) else draw.rows(start, stop, batch))
        return call(images)

    return forward
