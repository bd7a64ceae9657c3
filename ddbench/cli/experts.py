"""ddbench-experts: train (or find in the cache) the expert trajectories of a trajectory-matching method.

    ddbench-experts method=mtt dataset=cifar10 dataset.zca=true
    ddbench-experts method=datm dataset=cifar100 +expert_first=50 +expert_count=50   # a slice, e.g. per GPU

Uses the method config's ``experts`` block, the run's model (plus the method's model_overrides) and augment
config; the experts land in paths.cache where mtt/ftd/datm runs with the same recipe find them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ddbench.cli.app import hydra_main

log = logging.getLogger("ddbench")


def train(cfg: dict[str, Any]) -> int:
    from ddbench import pipeline
    from ddbench.cache import Cache
    from ddbench.checks import check_config
    from ddbench.methods.experts import load_or_train_experts
    from ddbench.utils import DDBenchError

    check_config(cfg, "experts")
    options = pipeline.check_method(cfg)
    spec = getattr(options, "experts", None)
    if spec is None:
        raise DDBenchError(f"method={cfg['method']['name']} trains no experts; use a trajectory method "
                           "(mtt, ftd, datm).")
    model_cfg = {**cfg["model"], **(getattr(options, "model_overrides", None) or {})}
    first = int(cfg.get("expert_first", 0))
    count = int(cfg.get("expert_count") or spec.num_experts - first)
    indices = list(range(first, min(first + count, spec.num_experts)))
    if not indices:
        raise DDBenchError(f"no experts in [{first}, {first + count}) with experts.num_experts={spec.num_experts}.")
    device = pipeline.pick_device(cfg)
    splits = pipeline.load_splits(cfg, device)
    cache = Cache(cfg["paths"]["cache"])
    start = time.perf_counter()
    trajectories = load_or_train_experts(splits, model_cfg, spec, cfg["augment"], device, cache, indices,
                                         progress=bool(cfg.get("progress")))
    print(f"experts {indices[0]}..{indices[-1]}: {tuple(trajectories.shape)} trajectories "
          f"(experts x snapshots x params) in {cache.root / 'experts'} ({time.perf_counter() - start:.1f} s)")
    return len(indices)


def main() -> Any:
    return hydra_main(train)()


if __name__ == "__main__":
    main()
