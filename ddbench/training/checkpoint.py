"""Checkpoints that let an interrupted loop resume where it stopped: a distillation loop's iterations, or the
trainer's epochs (evaluation runs, baselines).

A checkpoint is a cache product (kind "checkpoints") keyed on everything that determines the loop's result, so a
checkpoint is only ever resumed by the same computation; it holds the loop's tensors, optimizer state, the
generators' states and the seconds spent so far, and is removed when the loop finishes. Resuming reproduces the
uninterrupted run exactly (same draws, same updates).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from ddbench.cache import Cache

log = logging.getLogger(__name__)
NEVER = ("false", "0", "no", "never")
KIND = "checkpoints"
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM
_running: set[int] = set()  # the checkpointers of loops under way (between load and clear)
_stop = {"requested": False}


def request_stop() -> bool:
    """Ask the loops under way to save a checkpoint at the end of their current iteration (epoch) and stop the
    process (SystemExit 143); what SIGTERM does under ddbench's commands. False when no loop can save one (then
    the caller stops the process itself)."""
    if not _running:
        return False
    _stop["requested"] = True
    log.warning("stop requested: saving a checkpoint at the end of this iteration, then stopping "
                "(run the same command again to continue)")
    return True


class Checkpointer:
    """Saves and restores a loop's tensors, optimizer buffers and RNG states in the cache (kind "checkpoints").

    every: iterations (or epochs) between checkpoints, 0 = never. every_seconds: also wait at least this long
    since the last save (or the start), so fast loops write none and slow ones one every few minutes.
    resume: 'auto' resumes from a checkpoint of the same key when there is one; 'true' also warns when there is
    none; 'false' starts over. unit: what `every` counts (iteration or epoch), for the log. generator: one
    generator or one per network. opts: objects with a `.buf` tensor (MomentumSGD); anything else is passed as
    tensors. label: what the loop trains, for a progress line in the log at each save (none when empty).
    """

    def __init__(self, cache: Cache, key: dict[str, Any], every: int, resume: Any,
                 generator: torch.Generator | Sequence[torch.Generator], global_rng: bool = False,
                 every_seconds: float = 0.0, unit: str = "iteration", label: str = ""):
        self.cache, self.key, self.every = cache, key, int(every or 0)
        self.resume = str(resume).lower()
        self.generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        self.global_rng, self.every_seconds = global_rng, float(every_seconds)
        self.unit = unit  # what the loop counts, for the log: iteration | epoch
        self.started = self.last_save = time.perf_counter()
        self.prior_seconds = 0.0  # the time of earlier, interrupted parts
        self.label, self.total, self.first = label, 0, 0  # first: the iteration this process started from

    @property
    def path(self):
        return self.cache.path(KIND, self.key)

    def due(self, done: int, total: int) -> bool:
        self.total = total
        if not self.every or done >= total:
            return False
        if _stop["requested"]:
            return True
        if done % self.every:
            return False
        return not self.every_seconds or time.perf_counter() - self.last_save >= self.every_seconds

    def _generator_names(self) -> list[str]:
        return ["generator"] if len(self.generators) == 1 else [f"generator_{i}" for i in range(len(self.generators))]

    def save(self, iteration: int, tensors: dict[str, Tensor | None], opts: dict[str, Any] | None = None) -> None:
        out = {k: v for k, v in tensors.items() if v is not None}
        out.update({f"buf_{k}": o.buf for k, o in (opts or {}).items() if o.buf is not None})
        out["iteration"] = torch.tensor(iteration)
        out.update({name: g.get_state() for name, g in zip(self._generator_names(), self.generators)})
        out["seconds"] = torch.tensor(self.prior_seconds + time.perf_counter() - self.started, dtype=torch.float64)
        if self.global_rng:
            out["global_rng"] = torch.get_rng_state()
        self.cache.save(KIND, self.key, out)
        self.last_save = time.perf_counter()
        if self.label:
            self._log_progress(iteration, float(out["seconds"]))
        if _stop["requested"]:
            _stop["requested"] = False
            _running.clear()
            log.warning("saved a checkpoint at %s %d (%s) and stopped; run the same command again to continue",
                        self.unit, iteration, self.path)
            raise SystemExit(STOPPED_EXIT_CODE)

    def _log_progress(self, iteration: int, seconds: float) -> None:
        """One line per save: how far the loop is, the time it took so far and the time left at this part's pace."""
        left = ""
        if self.total > iteration > self.first:
            pace = (time.perf_counter() - self.started) / (iteration - self.first)
            left = f", about {pace * (self.total - iteration):.0f} s left"
        log.info("%s: %s %d of %d done in %.0f s%s (checkpoint saved)", self.label, self.unit, iteration, self.total,
                 seconds, left)

    def load(self, tensors: dict[str, Tensor | None], opts: dict[str, Any] | None, iterations: int
             ) -> tuple[int, dict[str, Tensor]]:
        """Restore `tensors` (in place) and `opts` from a matching checkpoint: (next iteration, what was stored).
        Called as the loop starts: from here until `clear`, a stop request saves a checkpoint of it."""
        if self.every:
            _running.add(id(self))
        if not self.every or self.resume in NEVER:
            return 0, {}
        path = self.path
        if not path.is_file():
            if self.resume == "true":
                log.warning("resume=true but no checkpoint matches this configuration (looked for %s)", path)
            return 0, {}
        needed = ("iteration", *self._generator_names(), *(k for k, v in tensors.items() if v is not None))
        found = self.cache.load(KIND, self.key, required=needed)
        if found is None:  # corrupted: the cache set it aside
            return 0, {}
        done = int(found["iteration"])
        if done > iterations:
            log.warning("checkpoint at iteration %d is past iterations=%d; starting over", done, iterations)
            return 0, {}
        with torch.no_grad():
            for name, value in tensors.items():
                if value is not None:
                    value.copy_(found[name])
        for name, opt in (opts or {}).items():
            if f"buf_{name}" in found:
                opt.buf = found[f"buf_{name}"].to(self.generators[0].device)
        for name, g in zip(self._generator_names(), self.generators):
            g.set_state(found[name])
        if self.global_rng:
            torch.set_rng_state(found["global_rng"])
        self.prior_seconds = float(found["seconds"]) if "seconds" in found else 0.0
        self.first = done
        log.info("resuming from the checkpoint at %s %d (%s)", self.unit, done, path)
        return done, found

    def clear(self) -> None:
        """The loop has finished: its checkpoint is removed."""
        _running.discard(id(self))
        if self.every and self.path.is_file():
            self.path.unlink(missing_ok=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """A torch optimizer's per-parameter state (momentum buffers, Adam moments and steps) as named tensors."""
    state = optimizer.state_dict()["state"]
    return {f"optim.{i}.{name}": v for i, entry in state.items() for name, v in entry.items() if torch.is_tensor(v)}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, found: dict[str, Tensor]) -> None:
    """Put the state saved by optimizer_tensors back into `optimizer` (same parameters, same order)."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in found.items():
        if name.startswith("optim."):
            _, index, field = name.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
