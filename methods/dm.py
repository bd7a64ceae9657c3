"""DM: distribution matching (Zhao & Bilen, WACV 2023).

Each iteration samples a fresh randomly initialised network and matches, per class, the mean embedding of a
real batch and of the synthetic images, both under the same Siamese DSA draw. All classes are processed in one
batched forward pass: loss = Σ_c ||mean φ(A(x_real,c)) − mean φ(A(x_syn,c))||².
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ddbench.methods.base import DistillResult, Method, register_method
from ddbench.models import create_model


def reinitialize(model: torch.nn.Module) -> None:
    """Fresh random weights in place (global RNG, seeded from the run's seed)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()


@register_method("dm")
class DistributionMatching(Method):
    def distill(self) -> DistillResult:
        torch.manual_seed(self.seed)  # the random embedders come from the global RNG: seed it from the run's seed
        info, train = self.info, self.splits.train
        iterations = int(self.option("iterations", 20000))
        batch_real = int(self.option("batch_real", 256))
        ipc, n_classes = self.ipc, info.num_classes
        if self.option("init", "real") == "real":
            syn = self.real_init()
        else:
            syn = torch.randn((ipc * n_classes, *info.shape), device=self.device, generator=self.generator)
        syn.requires_grad_(True)
        optimizer = torch.optim.SGD([syn], lr=float(self.option("lr_img", 1.0)), momentum=float(self.option("momentum", 0.5)))
        kwargs = {k: v for k, v in self.model_cfg.items() if k != "name"}
        net = create_model(self.model_cfg["name"], info.channels, n_classes, info.image_size, **kwargs).to(self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        dsa = self.make_augment()
        for _ in tqdm(range(iterations), desc="dm", disable=not self.option("progress", False)):
            reinitialize(net)
            rows = train.sample_per_class(batch_real, self.generator)  # [K, batch_real]
            real = train.images[rows.flatten()]
            fake = syn
            if dsa is not None:
                draw = dsa.sample(tuple(real.shape), self.generator, groups=n_classes, per_sample=False)
                real, fake = dsa.apply(real, draw), dsa.apply(syn, draw)
            with torch.no_grad():
                real_mean = net.embed(real).view(n_classes, rows.shape[1], -1).mean(1)
            syn_mean = net.embed(fake).view(n_classes, ipc, -1).mean(1)
            loss = (real_mean - syn_mean).pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return DistillResult(syn.detach(), self.hard_labels(), meta={"final_loss": float(loss.detach())})
