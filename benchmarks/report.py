"""One machine-readable line per throughput figure, collected by run_all.py into one table.

A benchmark script calls `emit(stage, figure, value, unit, target)` after printing its own human-readable lines;
the line reads `THROUGHPUT {"stage": ..., "figure": ..., "value": ..., "unit": ..., "target": ..., "device": ...}`.
"""

from __future__ import annotations

import json

import torch

PREFIX = "THROUGHPUT "


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def emit(stage: str, figure: str, value: float, unit: str, device: torch.device, target: str = "") -> None:
    print(PREFIX + json.dumps({"stage": stage, "figure": figure, "value": float(value), "unit": unit,
                               "target": target, "device": device_label(device)}), flush=True)
