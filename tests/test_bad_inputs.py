"""Bad inputs through the real entry points, as a table: each must end in exit code 2 and one `error:` line that
names the problem, with no traceback, no record and no artifact left behind.

The Hydra commands run in this process (their `main()` with sys.argv set), the argparse ones through
`main(argv)`; a few run as subprocesses to check the installed console scripts behave the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from ddbench.artifact import Artifact, save_artifact
from ddbench.records import make_record

K, S = 10, 16  # digits: 10 classes of 1x16x16 images
RUN = ("method=random", "dataset=digits", "smoke=true")
DM = ("method=dm", "dataset=digits", "smoke=true")


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # ddbench-run | ddbench-distill | ddbench-eval | ddbench-experts | ddbench-leaderboard | ddbench-export
    args: tuple[str, ...]  # "{tmp}" is the case's folder, "{file}" a plain file, "{fixture}" what `make` built
    expect: tuple[str, ...]  # each must appear in the error line (case-insensitive)
    make: Callable[[Path], Path] | None = None


# ----------------------------------------------------------------------------------------- input builders


def _artifact(tmp: Path, images=None, labels=None, meta_edit=None, lr=None) -> Artifact:
    meta = {"dataset": "digits", "num_classes": K, "image_shape": [1, S, S], "ipc": 1, "method": "test",
            "normalization": {"kind": "meanstd", "mean": [0.3053], "std": [0.3174]}, "config": {}, "seed": 0}
    images = torch.randn(K, 1, S, S) if images is None else images
    labels = torch.arange(K) if labels is None else labels
    return Artifact(images, labels, meta, lr)


def good_artifact(tmp: Path) -> Path:
    return save_artifact(_artifact(tmp), tmp / "given" / "artifact")


def edited_artifact(edit_meta=None, edit_tensors=None) -> Callable[[Path], Path]:
    """A saved artifact whose meta.json / tensors.safetensors are then changed by hand."""

    def make(tmp: Path) -> Path:
        path = good_artifact(tmp)
        if edit_meta is not None:
            meta = json.loads((path / "meta.json").read_text())
            edit_meta(meta)
            (path / "meta.json").write_text(json.dumps(meta))
        if edit_tensors is not None:
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(path / "tensors.safetensors"))
            edit_tensors(tensors)
            save_file(tensors, str(path / "tensors.safetensors"))
        return path

    return make


def raw_file_artifact(name: str, content: bytes | None) -> Callable[[Path], Path]:
    """An artifact with one file replaced by `content` (None: removed)."""

    def make(tmp: Path) -> Path:
        path = good_artifact(tmp)
        if content is None:
            (path / name).unlink()
        else:
            (path / name).write_bytes(content)
        return path

    return make


def reference(images=None, labels=None, lr=None, extra: dict | None = None) -> Callable[[Path], Path]:
    """A reference-format folder (images_best.pt, labels_best.pt, lr_best.pt) for digits."""

    def make(tmp: Path) -> Path:
        folder = tmp / "given" / "reference"
        folder.mkdir(parents=True)
        torch.save(torch.randn(K, 1, S, S) if images is None else images, folder / "images_best.pt")
        if labels != "missing":
            torch.save(torch.arange(K) if labels is None else labels, folder / "labels_best.pt")
        if lr is not None:
            torch.save(lr, folder / "lr_best.pt")
        for name, content in (extra or {}).items():
            (folder / name).write_bytes(content)
        return folder

    return make


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def pickled_exploit(tmp: Path) -> Path:
    folder = reference()(tmp)
    torch.save({"x": _Exploit()}, folder / "images_best.pt")
    return folder


def imagefolder(n_classes: int = K, corrupt: bool = False) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        from PIL import Image

        root = tmp / "given" / "folder"
        for c in range(n_classes):
            (root / f"{c:02d}").mkdir(parents=True)
            Image.new("L", (S, S), color=c * 20).save(root / f"{c:02d}" / "0.png")
        if corrupt:
            (root / "00" / "1.png").write_bytes(b"not a png")
        return root

    return make


def empty_dir(tmp: Path) -> Path:
    (tmp / "given" / "empty").mkdir(parents=True)
    return tmp / "given" / "empty"


def _record(**changes) -> dict:
    record = make_record(
        run_id="r1", method="dm", dataset="digits", ipc=1, label_type="hard", protocol="dc", eval_model="convnet",
        accuracies=[0.5, 0.6], seeds=[0, 1], distill_seconds=1.0, eval_seconds=1.0, peak_gpu_memory_bytes=None,
        device="cpu", config={}, seed=0, artifact=None,
    )
    record.update(changes)
    return record


def records(*bad: dict | str) -> Callable[[Path], Path]:
    """A records folder with one good record and the given bad ones (a str is written as the raw file)."""

    def make(tmp: Path) -> Path:
        folder = tmp / "given" / "records"
        folder.mkdir(parents=True)
        (folder / "good.json").write_text(json.dumps(_record()))
        for i, item in enumerate(bad):
            text = item if isinstance(item, str) else json.dumps(item)
            (folder / f"bad{i}.json").write_text(text)
        return folder

    return make


def records_and_export(tmp: Path) -> Path:
    records(_record())(tmp)
    return good_artifact(tmp)


def non_export_dir(tmp: Path) -> Path:
    good_artifact(tmp)
    (tmp / "given" / "mine").mkdir()
    (tmp / "given" / "mine" / "notes.txt").write_text("keep me")
    return tmp / "given" / "artifact"


# --------------------------------------------------------------------------------------------------- table


def hydra_cases() -> list[Case]:
    cases = []

    def add(id: str, *args: str, expect: tuple[str, ...], command: str = "ddbench-run", base=RUN, make=None):
        cases.append(Case(id, command, (*base, *args), expect, make))

    # types and ranges of the run's own keys
    add("seed-text", "seed=abc", expect=("seed", "'abc'"))
    add("seed-float", "seed=1.5", expect=("seed", "1.5"))
    add("seed-negative", "seed=-1", expect=("seed", ">= 0"))
    add("seed-bool", "seed=true", expect=("seed", "true"))
    add("ipc-float", "ipc=1.5", expect=("ipc", "1.5"))
    add("ipc-text", "ipc=abc", expect=("ipc", "'abc'"))
    add("ipc-zero", "ipc=0", expect=("ipc", ">= 1"))
    add("ipc-negative", "ipc=-3", expect=("ipc", "-3"))
    add("ipc-bool", "ipc=true", expect=("ipc", "true"))
    add("ipc-huge", "ipc=100000", expect=("ipc=100000", "138"))
    add("ipc-over-smallest-class", "ipc=139", expect=("ipc=139", "138"), base=("method=random", "dataset=digits"))
    add("ipc-over-smoke-limit", "ipc=51", expect=("ipc=51", "max_train_per_class=50"))
    add("ipc-over-max-train", "ipc=6", "+dataset.max_train_per_class=5", expect=("ipc=6", "max_train_per_class=5"),
        base=("method=random", "dataset=digits"))
    add("device-gpu", "device=gpu", expect=("device", "gpu", "cuda:N"))
    add("device-tpu", "device=tpu", expect=("device", "tpu"))
    add("device-bad-index", "device=cuda:abc", expect=("device", "cuda:abc"))
    add("device-missing-gpu", "device=cuda:99", expect=("cuda:99",))
    add("device-number", "device=123", expect=("device", "123"))
    add("smoke-not-bool", "smoke=maybe", expect=("smoke", "maybe"))
    add("progress-not-bool", "progress=2", expect=("progress", "2"))
    add("write-records-not-bool", "write_records=yes", expect=("write_records", "yes"))
    add("debug-not-bool", "debug=maybe", expect=("debug", "maybe"))
    add("helper-not-bool", "helper=1", expect=("helper", "1"))
    add("helper-without-reuse", "helper=true", expect=("helper=true", "reuse_distilled=true"))
    # names of config groups and keys
    add("unknown-method", "method=nope", expect=("method/nope", "random"), base=("dataset=digits", "smoke=true"))
    add("unknown-dataset-group", "dataset=nope", expect=("dataset/nope", "digits"), base=("method=random",))
    add("unknown-dataset-name", "dataset.name=nope", expect=("unknown dataset", "digits"))
    add("unknown-eval", "eval=nope", expect=("eval/nope",))
    add("unknown-model-group", "model=nope", expect=("model/nope",))
    add("unknown-model-name", "model.name=nope", expect=("model.name", "convnet"))
    add("unknown-augment", "augment=nope", expect=("augment/nope",))
    add("unknown-logger", "logger=nope", expect=("logger/nope",))
    add("unknown-experiment", "experiment=nope", expect=("experiment/nope",))
    add("unknown-launcher", "hydra/launcher=nope", expect=("launcher/nope",))
    add("unknown-key", "foo=1", expect=("foo", "+foo=1"))
    add("bad-override-syntax", "ipc=[1", expect=("command line", "[1"))
    add("missing-interpolation", "ipc=${nope}", expect=("nope",))
    # the evaluation protocol
    add("eval-epochs-zero", "eval.epochs=0", expect=("eval.epochs", ">= 1"))
    add("eval-epochs-negative", "eval.epochs=-5", expect=("eval.epochs", "-5"))
    add("eval-epochs-float", "eval.epochs=1.5", expect=("eval.epochs", "1.5"))
    add("eval-epochs-text", "eval.epochs=abc", expect=("eval.epochs", "abc"))
    add("eval-num-seeds-zero", "eval.num_seeds=0", expect=("eval.num_seeds", ">= 1"))
    add("eval-num-seeds-text", "eval.num_seeds=abc", expect=("eval.num_seeds", "abc"))
    add("eval-lr-negative", "eval.lr=-1", expect=("eval.lr", "-1"))
    add("eval-lr-zero", "eval.lr=0", expect=("eval.lr", "> 0"))
    add("eval-lr-text", "eval.lr=abc", expect=("eval.lr", "abc"))
    add("eval-models-unknown", "eval.models=[nope]", expect=("eval.models", "nope", "convnet"))
    add("eval-models-empty", "eval.models=[]", expect=("eval.models",))
    add("eval-models-not-list", "eval.models=convnet", expect=("eval.models", "list"))
    add("eval-batch-size-zero", "eval.batch_size=0", expect=("eval.batch_size",))
    add("eval-momentum-range", "eval.momentum=2", expect=("eval.momentum", "2"))
    add("eval-weight-decay-negative", "eval.weight_decay=-1", expect=("eval.weight_decay",))
    add("eval-test-batch-zero", "eval.test_batch_size=0", expect=("eval.test_batch_size",))
    add("eval-kind-unknown", "eval.kind=nope", expect=("eval.kind", "nope"))
    add("eval-augment-unknown", "eval.augment=nope", expect=("eval.augment", "nope"))
    add("eval-scores-unknown", "eval.scores=[nope]", expect=("eval.scores", "nope"))
    add("eval-teacher-epochs-zero", "eval.teacher.epochs=0", expect=("eval.teacher.epochs",))
    add("eval-teacher-model-unknown", "eval.teacher.models=[nope]", expect=("teacher.models", "nope"))
    add("eval-lr-grid-negative", "eval.lr_grid=[-1]", expect=("eval.lr_grid",))
    add("eval-val-fraction-range", "eval.val_fraction=2", expect=("eval.val_fraction",))
    add("eval-unknown-option", "+eval.nope=1", expect=("unknown eval option", "nope"))
    add("eval-learned-lr-not-bool", "eval.learned_lr=maybe", expect=("eval.learned_lr", "maybe"))
    add("eval-decay-at-range", "eval.lr_decay_at=5", expect=("eval.lr_decay_at",))
    # dataset options
    add("max-train-zero", "+dataset.max_train_per_class=0", expect=("dataset.max_train_per_class", ">= 1"))
    add("max-train-text", "+dataset.max_train_per_class=abc", expect=("dataset.max_train_per_class", "'abc'"))
    add("zca-not-bool", "dataset.zca=maybe", expect=("dataset.zca", "maybe"))
    add("zca-eps-negative", "dataset.zca_eps=-1", expect=("dataset.zca_eps",))
    add("imagefolder-missing-root", "dataset=imagefolder", "dataset.root={tmp}/none",
        expect=("none",), base=("method=random", "smoke=true", "ipc=1"))
    # folders that must be writable
    add("records-under-a-file", "paths.records={file}/records", expect=("paths.records", "is a file"))
    add("cache-under-a-file", "paths.cache={file}/cache", expect=("paths.cache", "is a file"))
    add("records-unwritable", "paths.records=/proc/ddbench-records", expect=("paths.records", "not writable"))
    add("cache-unwritable", "paths.cache=/proc/1/ddbench-cache", expect=("paths.cache", "not writable"))
    # method options that exist today
    add("dm-iterations-zero", "method.iterations=0", expect=("iterations", "0"), base=DM)
    add("mtt-iterations-zero", "method.iterations=0", expect=("iterations", "0"),
        base=("method=mtt", "dataset=digits", "smoke=true"))

    # ddbench-distill
    for id, arg, expect in (("ipc-text", "ipc=abc", ("ipc", "abc")), ("seed-text", "seed=abc", ("seed",)),
                            ("device-gpu", "device=gpu", ("device",)), ("ipc-huge", "ipc=100000", ("138",)),
                            ("cache-under-a-file", "paths.cache={file}/c", ("paths.cache",))):
        add(f"distill-{id}", arg, expect=expect, command="ddbench-distill")

    # ddbench-eval: the artifact and the evaluation
    def ev(id: str, make, *args: str, expect: tuple[str, ...]):
        artifact = () if make is None else ("artifact={fixture}",)
        add(f"eval-{id}", *artifact, *args, expect=expect, command="ddbench-eval", base=("smoke=true",), make=make)

    ev("no-artifact", None, expect=("artifact=PATH",))
    ev("artifact-missing", None, "artifact={tmp}/nowhere", expect=("nowhere", "does not exist"))
    ev("artifact-is-file", None, "artifact={file}", expect=("not a directory",))
    ev("artifact-empty-folder", empty_dir, expect=("not a recognized",))
    ev("reference-no-dataset", reference(), expect=("dataset=NAME",))
    ev("reference-wrong-dataset", reference(), "dataset=fashion_mnist", expect=("shape", "fashion_mnist"))
    ev("reference-pickle-exploit", pickled_exploit, "dataset=digits", expect=("refused", "images_best.pt"))
    ev("reference-int-images", reference(images=torch.zeros(K, 1, S, S, dtype=torch.uint8)), "dataset=digits",
       expect=("images_best.pt", "uint8"))
    ev("reference-label-count", reference(labels=torch.arange(K - 1)), "dataset=digits",
       expect=("labels_best.pt", "9 labels"))
    ev("reference-label-range", reference(labels=torch.arange(K) + 1), "dataset=digits", expect=("labels_best.pt",))
    ev("reference-lr-two-values", reference(lr=torch.tensor([0.1, 0.2])), "dataset=digits", expect=("lr_best.pt",))
    ev("reference-lr-negative", reference(lr=torch.tensor(-0.1)), "dataset=digits", expect=("lr", "> 0"))
    ev("reference-lr-nan", reference(lr=torch.tensor(float("nan"))), "dataset=digits", expect=("lr", "not finite"))
    ev("reference-labels-missing", reference(labels="missing"), "dataset=digits", expect=("labels_best.pt",))
    ev("reference-images-dict", reference(images={"a": 1}), "dataset=digits", expect=("images_best.pt", "dict"))
    ev("reference-truncated", reference(extra={"images_best.pt": b"PK\x03\x04garbage"}), "dataset=digits",
       expect=("refused", "images_best.pt"))
    ev("reference-soft-count", reference(labels=torch.randn(K, K), images=torch.randn(K + 1, 1, S, S)),
       "dataset=digits", expect=("labels_best.pt",))
    ev("artifact-float16-images", edited_artifact(edit_tensors=lambda t: t.update(images=t["images"].half())),
       expect=("float32", "float16"))
    ev("artifact-ipc-text", edited_artifact(edit_meta=lambda m: m.update(ipc="abc")), expect=("ipc", "'abc'"))
    ev("artifact-ipc-wrong", edited_artifact(edit_meta=lambda m: m.update(ipc=2)), expect=("ipc=2",))
    ev("artifact-classes-wrong", edited_artifact(edit_meta=lambda m: m.update(num_classes=5)), expect=("num_classes",))
    ev("artifact-shape-wrong", edited_artifact(edit_meta=lambda m: m.update(image_shape=[3, 32, 32])),
       expect=("image_shape",))
    ev("artifact-shape-text", edited_artifact(edit_meta=lambda m: m.update(image_shape="16x16")),
       expect=("image_shape", "16x16"))
    ev("artifact-dataset-unknown", edited_artifact(edit_meta=lambda m: m.update(dataset="nope")),
       expect=("unknown dataset", "nope"))
    ev("artifact-newer-format", edited_artifact(edit_meta=lambda m: m.update(format_version=99)),
       expect=("format_version", "upgrade"))
    ev("artifact-meta-not-json", raw_file_artifact("meta.json", b"{not json"), expect=("meta.json", "not valid JSON"))
    ev("artifact-meta-list", raw_file_artifact("meta.json", b"[1, 2]"), expect=("meta.json", "JSON object"))
    ev("artifact-meta-missing", raw_file_artifact("meta.json", None), expect=("meta.json",))
    ev("artifact-tensors-truncated", raw_file_artifact("tensors.safetensors", b"\x10\x00\x00"),
       expect=("tensors.safetensors", "corrupt"))
    ev("artifact-images-nan", edited_artifact(edit_tensors=lambda t: t["images"].fill_(float("nan"))),
       expect=("NaN",))
    ev("artifact-labels-shuffled", edited_artifact(edit_tensors=lambda t: t.update(labels=t["labels"].flip(0))),
       expect=("class-major",))
    ev("artifact-labels-float16", edited_artifact(edit_tensors=lambda t: t.update(labels=t["labels"].short())),
       expect=("labels", "int16"))
    ev("artifact-dataset-mismatch", good_artifact, "dataset=fashion_mnist", expect=("distilled from", "digits"))
    ev("artifact-eval-lr", good_artifact, "eval.lr=-1", expect=("eval.lr",))
    ev("artifact-eval-model", good_artifact, "eval.models=[nope]", expect=("nope",))
    ev("artifact-records-under-file", good_artifact, "paths.records={file}/r", expect=("paths.records",))
    ev("artifact-seed-text", good_artifact, "seed=abc", expect=("seed",))
    ev("imagefolder-class-count", imagefolder(3), "dataset=digits", expect=("3 class folders", "10 classes"))
    ev("imagefolder-corrupt-image", imagefolder(corrupt=True), "dataset=digits", expect=("1.png",))

    # ddbench-experts
    add("experts-not-a-trajectory-method", expect=("trains no experts",), command="ddbench-experts", base=DM)
    add("experts-seed-text", "seed=abc", expect=("seed",), command="ddbench-experts",
        base=("method=mtt", "dataset=digits", "smoke=true"))
    return cases


def argparse_cases() -> list[Case]:
    lb, ex = "ddbench-leaderboard", "ddbench-export"
    return [
        Case("leaderboard-records-missing", lb, ("--records", "{tmp}/none"), ("no records folder",)),
        Case("leaderboard-records-is-file", lb, ("--records", "{file}"), ("is a file",)),
        Case("leaderboard-corrupt-json", lb, ("--records", "{fixture}"), ("bad0.json", "--lenient"),
             records("{not json")),
        Case("leaderboard-scores-text", lb, ("--records", "{fixture}"), ("scores", "--lenient"),
             records(_record(scores={"hlr": "high"}))),
        Case("leaderboard-scores-nan", lb, ("--records", "{fixture}"), ("scores",),
             records(_record(scores={"hlr": float("nan")}))),
        Case("leaderboard-percent-accuracies", lb, ("--records", "{fixture}"), ("fractions",),
             records(_record(accuracies=[50.0, 60.0], mean=55.0, std=5.0))),
        Case("leaderboard-missing-field", lb, ("--records", "{fixture}"), ("method",),
             records({k: v for k, v in _record().items() if k != "method"})),
        Case("leaderboard-record-not-object", lb, ("--records", "{fixture}"), ("expected a JSON object",),
             records("[1, 2]")),
        Case("leaderboard-out-under-file", lb, ("--records", "{fixture}", "--out", "{file}/board.md"),
             ("cannot write", "board.md"), records()),
        Case("leaderboard-out-is-dir", lb, ("--records", "{fixture}", "--out", "{tmp}"), ("is a directory",),
             records()),
        Case("leaderboard-html-out-under-file", lb,
             ("--records", "{fixture}", "--format", "html", "--out", "{file}/board.html"), ("cannot write",),
             records()),
        Case("export-existing-out", ex, ("{fixture}", "--format", "npz", "--out", "{file}"), ("--force",),
             good_artifact),
        Case("export-missing-artifact", ex, ("{tmp}/none", "--format", "npz", "--out", "{tmp}/a.npz"),
             ("does not exist",)),
        Case("export-out-under-file", ex, ("{fixture}", "--format", "npz", "--out", "{file}/a.npz"),
             ("cannot write", "a.npz"), good_artifact),
        Case("export-grid-out-under-file", ex, ("{fixture}", "--format", "png-grid", "--out", "{file}/g.png"),
             ("cannot write", "g.png"), good_artifact),
        Case("export-into-foreign-folder", ex,
             ("{fixture}", "--format", "imagefolder", "--out", "{tmp}/given/mine", "--force"),
             ("not an ImageFolder export",), non_export_dir),
        Case("export-reference-no-dataset", ex, ("{fixture}", "--format", "npz", "--out", "{tmp}/a.npz"),
             ("dataset",), reference()),
        Case("export-reference-unknown-dataset", ex,
             ("{fixture}", "--format", "npz", "--out", "{tmp}/a.npz", "--dataset", "nope"), ("unknown dataset",),
             reference()),
        Case("export-artifact-float16", ex, ("{fixture}", "--format", "npz", "--out", "{tmp}/a.npz"), ("float32",),
             edited_artifact(edit_tensors=lambda t: t.update(images=t["images"].half()))),
        Case("export-artifact-ipc-text", ex, ("{fixture}", "--format", "npz", "--out", "{tmp}/a.npz"), ("ipc",),
             edited_artifact(edit_meta=lambda m: m.update(ipc="abc"))),
    ]


CASES = hydra_cases() + argparse_cases()


# ------------------------------------------------------------------------------------------------- runner


def _fill(args: tuple[str, ...], tmp: Path, file: Path, fixture: Path | None) -> list[str]:
    return [a.replace("{tmp}", str(tmp)).replace("{file}", str(file)).replace("{fixture}", str(fixture))
            for a in args]


def _hydra_main(command: str) -> Callable[[], object]:
    from ddbench.cli import distill, evaluate, experts, run

    return {"ddbench-run": run.main, "ddbench-distill": distill.main, "ddbench-eval": evaluate.main,
            "ddbench-experts": experts.main}[command]


def run_case(case: Case, tmp: Path, monkeypatch, capsys) -> tuple[int, str, str, Path]:
    file = tmp / "plain.txt"
    file.write_text("a plain file\n")
    fixture = case.make(tmp) if case.make else None
    out = tmp / "out"
    args = _fill(case.args, tmp, file, fixture)
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if case.command in ("ddbench-leaderboard", "ddbench-export"):
        from ddbench.cli import export, leaderboard

        main = leaderboard.main if case.command == "ddbench-leaderboard" else export.main
        code = main(args)
    else:
        defaults = [f"paths.records={tmp / 'records'}", f"paths.cache={tmp / 'cache'}", f"hydra.run.dir={out}"]
        # the case's own paths.* value comes last, so it wins
        monkeypatch.setattr(sys, "argv", [case.command, *defaults, *args])
        with pytest.raises(SystemExit) as exit_info:
            _hydra_main(case.command)()
        code = exit_info.value.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


@pytest.fixture(scope="module", autouse=True)
def _quiet(one_thread):
    yield


def test_the_table_holds_at_least_100_distinct_bad_inputs():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_clear_line(case: Case, tmp_path, monkeypatch, capsys):
    code, out, err, run_dir = run_case(case, tmp_path, monkeypatch, capsys)
    shown = f"$ {case.command} {' '.join(case.args)}\nexit {code}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}"
    assert code == 2, shown
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, shown
    for word in case.expect:
        assert word.lower() in errors[0].lower(), shown
    assert "Traceback" not in out + err, shown
    assert not list((tmp_path / "records").rglob("*.json")), shown
    assert not [p for p in tmp_path.rglob("meta.json") if "given" not in p.parts], shown  # no orphan artifact
    assert not [p for p in tmp_path.rglob("*.tmp*") if "given" not in p.parts], shown


def test_console_scripts_report_the_same_way(tmp_path):
    """The installed scripts (a new process each: no state from other tests) give the same one line and exit 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    bin_dir = Path(sys.executable).parent
    run = subprocess.run(
        [str(bin_dir / "ddbench-run"), *RUN, "seed=abc", f"paths.records={tmp_path / 'records'}",
         f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("error:")] == [
        "error: seed must be an int >= 0, got 'abc'; e.g. seed=0."
    ], run.stderr
    assert "Traceback" not in run.stderr + run.stdout

    traced = subprocess.run(
        [str(bin_dir / "ddbench-run"), *RUN, "seed=abc", "debug=true", f"paths.records={tmp_path / 'records'}",
         f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert traced.returncode != 0 and "Traceback" in traced.stderr and "DDBenchError" in traced.stderr
