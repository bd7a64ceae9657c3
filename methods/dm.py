"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh randomly initialised network and matches, per class, the mean embedding of a
real batch and of the synthetic images, both under the same Siamese DSA draw:
loss = Σ_c ||mean φ(A(x_real,c)) − mean φ(A(x_syn,c))||². All classes share each forward, in chunks under a memory
budget (`memory_budget_mb`; default: most of the free GPU memory, or a fixed budget and cache-sized chunks on a CPU).
The images take momentum-SGD steps; divergence is checked on the device and long runs resume from checkpoints
(methods/loopkit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.methods.loopkit import DivergenceGuard, MomentumSGD, image_step_done
from ddbench.methods.options import RUN_CONTROL_OPTIONS, MethodOptions, option
from ddbench.models import create_model
from ddbench.training import data_fingerprint, layout_digest
from ddbench.training.chunked import ChunkPlan, Footprint, augmented_forward, batch_coupled, class_means, memory_budget
from ddbench.training.checkpoint import Checkpointer

# options that do not change the result (memory_budget_mb only changes chunking, exact up to float rounding)
VOLATILE_OPTIONS = (*RUN_CONTROL_OPTIONS, "iterations", "memory_budget_mb")


def reinitialize(model: torch.nn.Module) -> None:
    """Fresh random weights in place (global RNG, seeded from the run's seed)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()


@dataclass
class DMOptions(MethodOptions):
    """main_DM.py defaults (conf/method/dm.yaml)."""

    iterations: int = option(20000, low=1)
    lr_img: float = option(1.0, positive=True)
    momentum: float = option(0.5, low=0)
    batch_real: int = option(256, low=1)
    init: str = option("real", choices=("real", "noise"))
    checkpoint_every: int = option(2000, low=0)  # iterations between checkpoints (0 = never)
    resume: str = "auto"  # auto | true | false
    guard_every: int = option(100, low=1)  # iterations between divergence checks (one host sync each)
    memory_budget_mb: float | None = option(None, positive=True)  # None: 80% of free GPU memory, 2048 on a CPU


@register_method("dm")
class DistributionMatching(Method):
    Options = DMOptions
    opts: DMOptions

    def distill(self) -> DistillResult:
        o = self.opts
        torch.manual_seed(self.seed)  # the random embedders come from the global RNG: seed it from the run's seed
        info, train = self.info, self.splits.train
        ipc, n_classes = self.ipc, info.num_classes
        if o.init == "real":
            syn = self.real_init()
        else:
            syn = torch.randn((ipc * n_classes, *info.shape), device=self.device, generator=self.generator)
        optimizer = {"images": MomentumSGD(o.lr_img, o.momentum)}
        kwargs = {k: v for k, v in self.model_cfg.items() if k != "name"}
        net = create_model(self.model_cfg["name"], info.channels, n_classes, info.image_size, **kwargs).to(self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        dsa = self.make_augment()
        key = {"method": self.name, "options": {k: v for k, v in o.to_dict().items() if k not in VOLATILE_OPTIONS},
               "model": self.model_cfg, "layout": layout_digest(self.model_cfg, info), "augment": self.augment_cfg,
               "ipc": ipc, "seed": self.seed,
               "data": data_fingerprint(self.splits), "device": self.device.type}
        ckpt = Checkpointer(self.cache, key, o.checkpoint_every, o.resume, self.generator, global_rng=True)
        start, _ = ckpt.load({"images": syn}, optimizer, o.iterations)
        guard = DivergenceGuard({"images": syn}, o.guard_every)
        plan = self.chunk_plan(net, syn)
        real_labels = torch.arange(n_classes, device=self.device).repeat_interleave(o.batch_real)
        syn_labels = self.hard_labels()
        loss = torch.zeros((), device=self.device)
        for it in tqdm(range(start, o.iterations), desc="dm", disable=not o.progress, initial=start,
                       total=o.iterations):
            reinitialize(net)
            rows = train.sample_per_class(o.batch_real, self.generator).flatten()  # [K*batch_real], class-major
            draw = None
            if dsa is not None:
                draw = dsa.sample((len(rows), *info.shape), self.generator, groups=n_classes, per_sample=False)
            with torch.no_grad():
                real_forward = augmented_forward(net.embed, dsa, draw, len(rows), source=train.images)
                real_mean = class_means(real_forward, rows, real_labels, n_classes, plan.no_grad)
            x = syn.detach().requires_grad_(True)
            syn_forward = augmented_forward(net.embed, dsa, draw, len(x))
            syn_mean = class_means(syn_forward, x, syn_labels, n_classes, plan.grad)
            loss = (real_mean - syn_mean).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, x)
            optimizer["images"].step(syn, grad)
            image_step_done("dm", it, o.iterations, syn, self.hard_labels, guard, ckpt, optimizer)
        ckpt.clear()
        return DistillResult(syn.detach(), self.hard_labels(),
                             meta={"final_loss": float(loss.detach()), "resumed_seconds": ckpt.prior_seconds})

    def chunk_plan(self, net: torch.nn.Module, syn: torch.Tensor) -> ChunkPlan:
        """Rows per chunk of the real (no graph) and synthetic (with graph) forwards under the memory budget."""
        footprint = Footprint.measure(net, syn[:2].detach(), call=net.embed)
        budget = memory_budget(self.device, self.opts.memory_budget_mb)
        return ChunkPlan.make(footprint, budget, self.device, coupled=batch_coupled(net))
