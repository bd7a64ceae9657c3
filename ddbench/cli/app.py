"""Shared Hydra entry point: every ddbench-* Hydra command composes ddbench.conf/config.yaml.

Errors: a bad input (DDBenchError, a config the composer refuses, a bad override) ends in one `error: ...` line
and exit code 2; anything else in one `error: internal error ...` line and exit code 1. The full traceback is shown
with HYDRA_FULL_ERROR=1 or the key debug=true. In a sweep (-m) a failed job is logged and the others go on; at the
end the failed jobs are listed and the command exits with 1. SIGTERM (a cluster's time limit, `kill`,
ddbench-board's --max-minutes) lets a loop with checkpoints save one at the end of its current iteration or epoch
and exits with 143; rerunning the command continues from there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddbench.utils import DDBenchError, one_line

log = logging.getLogger("ddbench")
Task = Callable[[dict[str, Any]], Any]
CONFIG_ENTRY_POINTS = "ddbench.configs"


def plugin_search_path() -> list[str]:
    """Hydra search-path entries of installed packages' configs: each `ddbench.configs` entry point names a
    package that holds config groups (e.g. method/NAME.yaml), added as pkg://<package>."""
    return sorted({f"pkg://{ep.value}" for ep in entry_points(group=CONFIG_ENTRY_POINTS)})


def with_plugin_search_path(argv: list[str]) -> list[str]:
    """argv with the plug-ins' config packages appended to hydra.searchpath (merged with a user's own list)."""
    extra = plugin_search_path()
    if not extra:
        return argv
    out, given = [], []
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            given = [p.strip() for p in arg.split("=", 1)[1].strip("[]").split(",") if p.strip()]
        else:
            out.append(arg)
    paths = given + [p for p in extra if p not in given]
    return [*out, f"hydra.searchpath=[{','.join(paths)}]"]
FAILED_DIR = ".failed"  # under the sweep folder: one file per failed job, written by the job

# A short random id, the same for every use within one run (and, through Hydra's copied resolver cache, within one
# sweep): it keeps the output folders of runs started in the same second apart.
if not OmegaConf.has_resolver("ddbench.uid"):
    OmegaConf.register_new_resolver("ddbench.uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


def invoked_command() -> str:
    return " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def is_user_error(err: BaseException) -> bool:
    """A bad input (exit 2), as opposed to a fault of ddbench or of the machine (exit 1)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, (DDBenchError, HydraException, OmegaConfBaseException))


def describe(err: BaseException) -> str:
    from hydra.errors import OverrideParseException

    text = one_line(str(err))
    if isinstance(err, DDBenchError):
        return text
    cause = err.__cause__
    if cause is not None and one_line(str(cause)) not in text:
        text = f"{text} ({one_line(str(cause))})"
    if isinstance(err, OverrideParseException):
        return f"cannot read the command line: {text}"
    if is_user_error(err):
        return text or type(err).__name__
    return (f"internal error {type(err).__name__}: {text}; rerun with HYDRA_FULL_ERROR=1 (or debug=true) for the "
            "traceback and report it")


def wants_traceback(argv: list[str]) -> bool:
    flag = os.environ.get("HYDRA_FULL_ERROR", "").lower() in ("1", "true", "yes")
    return flag or any(a.lower() in ("debug=true", "debug=1", "debug=yes", "+debug=true") for a in argv)


def _mark_failed(err: BaseException) -> None:
    """Leave `<sweep dir>/.failed/<job num>.txt` with the job's overrides and error, for the launching process."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    folder = Path(hc.sweep.dir) / FAILED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    overrides = " ".join(hc.overrides.task)
    (folder / f"{hc.job.num}.txt").write_text(f"job {hc.job.num} ({overrides}): {describe(err)}\n")


def failed_jobs(sweep_dir: str | Path) -> list[str]:
    folder = Path(sweep_dir) / FAILED_DIR
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    return [f.read_text().strip() for f in files]


class SweepReport(Callback):
    """Hydra callback (configured in config.yaml): after a sweep, remember the jobs that failed."""

    failed: list[str] = []

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        SweepReport.failed = []

    def on_multirun_end(self, config: DictConfig, **_: Any) -> None:
        SweepReport.failed = failed_jobs(config.hydra.sweep.dir)


_failure: list[BaseException] = []  # the error of a single (non-sweep) run


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: a loop with checkpoints saves one at the end of its current iteration and then stops; otherwise
    (or at a second SIGTERM) stop now. Either way the stack unwinds, so half-written files are removed."""
    from ddbench.training.checkpoint import request_stop

    if signum == signal.SIGTERM and not _terminating and request_stop():
        _terminating.append(signum)
        return
    raise SystemExit(128 + signum)


_terminating: list[int] = []


def run_cli(app: Callable[[], Any]) -> Any:
    """Run a Hydra app with ddbench's error handling (see the module docstring)."""
    full = wants_traceback(sys.argv[1:])
    handler = signal.getsignal(signal.SIGTERM)
    if handler is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)  # a cluster's time limit or `kill` cleans up like Ctrl-C
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; the error is printed here
    SweepReport.failed = []
    _failure.clear()
    _terminating.clear()
    try:
        result = app()
        if _failure:
            raise _failure.pop()
    except Exception as err:  # noqa: BLE001 - every error ends in one line unless a traceback was asked for
        if full:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        sys.exit(2 if is_user_error(err) else 1)
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written was kept.", file=sys.stderr)
        sys.exit(130)
    finally:
        if handler is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, handler)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    if SweepReport.failed:
        listing = "\n".join(f"  {line}" for line in SweepReport.failed)
        print(f"error: {len(SweepReport.failed)} sweep job(s) failed:\n{listing}", file=sys.stderr)
        sys.exit(1)
    return result


def hydra_main(task: Task) -> Callable[[], Any]:
    """Wrap task(plain_config) as a Hydra command line with ddbench's error handling (see the module docstring)."""

    @hydra.main(version_base="1.3", config_path="pkg://ddbench.conf", config_name="config")
    def app(cfg: DictConfig) -> Any:
        from ddbench.pipeline import resolved_config

        try:
            return task(resolved_config(cfg))
        except Exception as err:
            if not _is_multirun():
                _failure.append(err)  # raised again by run_cli, after Hydra has returned (Hydra would log it first)
                return None
            log.error("job failed: %s", describe(err))
            _mark_failed(err)
            return None

    def main() -> Any:
        sys.argv[1:] = with_plugin_search_path(sys.argv[1:])
        return run_cli(app)

    return main
