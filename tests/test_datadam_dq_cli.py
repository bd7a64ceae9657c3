"""`ddbench-run method=datadam|dq dataset=digits ipc=10 smoke=true` end to end: artifact, meta and record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddbench.artifact import load_artifact
from ddbench.artifact.patches import check_patch_fill

RUN = str(Path(sys.executable).parent / "ddbench-run")


@pytest.mark.parametrize("method", ["datadam", "dq"])
def test_smoke_run_end_to_end(method, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    args = [RUN, f"method={method}", "dataset=digits", "ipc=10", "smoke=true", "progress=false",
            "smoke_settings.eval.num_seeds=1", "smoke_settings.eval.epochs=1", f"paths.records={tmp_path / 'records'}",
            f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{method} | digits | ipc 10 | dc | convnet" in done.stdout
    artifact = load_artifact(tmp_path / "out" / "artifact")
    assert artifact.images.shape == (100, 1, 16, 16) and artifact.meta["method"] == method
    records = list((tmp_path / "records").rglob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["method"] == method
    if method == "datadam":
        assert artifact.meta["network_norm"] == "batchnorm" and artifact.meta["attention_power"] == 4.0
    else:
        check_patch_fill(artifact.images, artifact.extras, artifact.meta["decode"])
        assert artifact.meta["stored_bytes"] == artifact.meta["decode"]["stored_bytes"] < artifact.meta["file_bytes"]
        assert artifact.meta["dq"]["ipc_equivalent"] == pytest.approx(8.0)
