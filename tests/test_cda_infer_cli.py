"""`ddbench-run method=cda|infer dataset=digits ipc=10 smoke=true` end to end: teacher, set, evaluation, record."""

from __future__ import annotations

import pytest
import torch

from ddbench.artifact import load_artifact
from test_cli import make_run, single_record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli_recover")
    started = {
        "cda": make_run(base, "cda", "ddbench-run", "method=cda", "dataset=digits", "ipc=10", "smoke=true",
                        "eval=cda", "progress=false"),
        "infer": make_run(base, "infer", "ddbench-run", "method=infer", "dataset=digits", "ipc=10", "smoke=true",
                          "eval=infer", "progress=false"),
    }
    for run in started.values():
        run.start()
    yield started
    for run in started.values():
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_cda_smoke_run(runs):
    run = runs["cda"].wait()
    assert run.returncode == 0, run.explain()
    record = single_record(run)
    assert (record["method"], record["ipc"], record["protocol"]) == ("cda", 10, "cda")
    assert "teacher convnet_bn" in run.stdout + run.stderr  # the recover teacher was trained (and logged)
    artifact = load_artifact(run.out / "artifact")
    assert artifact.images.shape == (100, 1, 16, 16) and artifact.label_type == "hard"
    assert "no uint8/JPEG" in artifact.meta["storage"]


def test_infer_smoke_run(runs):
    run = runs["infer"].wait()
    assert run.returncode == 0, run.explain()
    record = single_record(run)
    assert (record["method"], record["ipc"], record["protocol"], record["label_type"]) == ("infer", 10, "infer", "soft")
    artifact = load_artifact(run.out / "artifact")
    # smoke: M = 2 teachers, ipc_init = floor(10 / 1.2) = 8 → 80 real + 16 UFC stored, 8·3 = 24 per class trained on
    assert artifact.factorized and artifact.images.shape == (80, 1, 16, 16)
    assert artifact.extras["ufc"].shape == (8, 2, 1, 16, 16)
    images, labels = artifact.training_set()
    assert images.shape == (240, 1, 16, 16) and labels.shape == (240, 10) and bool(torch.isfinite(labels).all())
    from ddbench.utils import tensor_digest

    # the record names the 240 images trained on (decoded), as the Python API's records do, not the stored 80
    assert record["images_digest"] == tensor_digest(images) != tensor_digest(artifact.images)
