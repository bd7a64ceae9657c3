"""What the parity scripts share: the command line, loading the reference's code from the user's checkout, the
inputs both sides get, and the table of differences.

Loading the reference. Its scripts are not importable as modules (argparse and wandb at the top, CUDA calls, data
downloads), so a script names the file, and `Edits` rewrites the parsed source (ast) before it is executed in a
fresh namespace, never written anywhere: strings 'cuda' → 'cpu', `x.cuda()` → `x`, hard-coded class counts and
image sizes inside named functions → names the script defines, and "probes": a call `_probe(locals())` after a
given statement, which records what the reference computed at that point without changing it. Every edit that
fired is listed in the output ("reference edits"), so the reader sees exactly what ran. Nothing of the reference
is copied into this repository; it is read from `--reference` at run time.

Differences. For every piece: the largest absolute difference max|ours − ref| and the relative one,
max|ours − ref| / max|ref| (relative to the reference's largest magnitude, so entries that are zero on one side
do not blow it up). A piece passes at float rounding (relative ≤ 1e-5 by default); a piece with a known, explained
difference carries its explanation, and the script exits with status 1 only when an unexplained piece fails.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROUNDING = 1e-5


# --------------------------------------------------------------------------------------------- command line


def start(doc: str, repository: str, marker: str, title: str,
          options: dict[str, tuple[int, str]] | None = None) -> tuple[argparse.Namespace, "Report"]:
    """The command line and the report of a parity script: --reference PATH (a checkout of `repository` holding
    `marker`), --seed, --threads, --json FILE and the integer `options` {flag: (default, help)}; also seeds torch
    and Python's random and hides GPUs (the comparison runs on the CPU)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True,
                        help=f"a checkout of https://github.com/{repository} (never committed here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on shared cores more threads mostly wait for each other)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON to this file")
    for flag, (default, help_text) in (options or {}).items():
        parser.add_argument(flag, type=int, default=default, help=help_text)
    args = parser.parse_args()
    if not (args.reference / marker).is_file():
        parser.error(f"--reference {args.reference} has no {marker}; pass a checkout of "
                     f"https://github.com/{repository} (git clone https://github.com/{repository}).")
    args.reference = args.reference.resolve()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU only: the reference's DataParallel then wraps a CPU module
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # the reference scripts draw their roll offsets with Python's random
    return args, Report(title, args.reference, reference_commit(args.reference))


def reference_commit(path: Path) -> str:
    """`git rev-parse HEAD` of the checkout, or a note when it is not a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# ------------------------------------------------------------------------------------- loading the reference


@dataclass
class Edits(ast.NodeTransformer):
    """The mechanical source edits applied to a reference file before it runs (see the module docstring).

    strings: {old: new} string constants; expressions: {source: source} for attribute expressions such as
    'torch.float' (the precision of a run); drop_calls: method names whose call `x.name()` becomes `x`;
    constants: {function name: {number: variable name}} inside that function only; keywords: {keyword: variable
    name}, the value of every call's keyword argument of that name (e.g. exp=1 → exp=POWER); probes: {statement
    source: probe name}, a call `probe(locals())` inserted after every statement whose source is that text;
    statements: {statement source: new source}, a statement replaced where a constant edit would be too broad (the
    new source is then edited like the rest).
    """

    strings: dict[str, str] = field(default_factory=lambda: {"cuda": "cpu"})
    expressions: dict[str, str] = field(default_factory=dict)
    drop_calls: tuple[str, ...] = ("cuda",)
    constants: dict[str, dict[int | float, str]] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    statements: dict[str, str] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    _function: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.applied[what] = self.applied.get(what, 0) + 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self._function.append(node.name)
        self.generic_visit(node)
        self._function.pop()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and node.value in self.strings:
            self.note(f"{node.value!r} -> {self.strings[node.value]!r}")
            return ast.copy_location(ast.Constant(self.strings[node.value]), node)
        for name in self._function:
            table = self.constants.get(name, {})
            if type(node.value) in (int, float) and node.value in table:
                self.note(f"{node.value} -> {table[node.value]} in {name}()")
                return ast.copy_location(ast.Name(table[node.value], ast.Load()), node)
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        if node.arg in self.keywords:
            self.note(f"{node.arg}={ast.unparse(node.value)} -> {node.arg}={self.keywords[node.arg]}")
            node.value = ast.copy_location(ast.Name(self.keywords[node.arg], ast.Load()), node.value)
            return node
        return self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        new = self.expressions.get(ast.unparse(node))
        if new is None:
            return self.generic_visit(node)
        self.note(f"{ast.unparse(node)} -> {new}")
        return ast.copy_location(ast.parse(new, mode="eval").body, node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in self.drop_calls and not node.args and not node.keywords:
            self.note(f".{func.attr}() removed")
            return func.value
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, name, [self._replaced(stmt) for stmt in body])
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, name, self._with_probes(body))
        return node

    def _replaced(self, stmt: ast.stmt) -> ast.stmt:
        new = self.statements.get(ast.unparse(stmt))
        if new is None:
            return stmt
        self.note(f"`{ast.unparse(stmt)}` -> `{new}`")
        return ast.copy_location(ast.parse(new).body[0], stmt)

    def _with_probes(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            out.append(stmt)
            probe = self.probes.get(ast.unparse(stmt))
            if probe is not None:
                self.note(f"probe {probe}(locals()) after `{ast.unparse(stmt)}`")
                call = ast.parse(f"{probe}(locals())").body[0]
                out.append(ast.copy_location(call, stmt))
        return out

    def summary(self) -> str:
        return "; ".join(f"{what} (x{count})" for what, count in self.applied.items()) or "none"


def quiet(*args: Any, **kwargs: Any) -> None:
    """In place of the reference's print (its progress messages)."""


def stub_module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def modules_in_place(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """sys.modules[name] = module for each entry while the block runs (the reference's flat imports); nothing is
    written into the reference's checkout meanwhile (no bytecode cache)."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave no __pycache__ in the checkout
    try:
        yield
    finally:
        sys.dont_write_bytecode = bytecode
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype inside the block (the reference's networks are built with it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def import_file(path: Path, name: str, modules: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Import one reference file as module `name` (its own flat imports resolved through `modules`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with modules_in_place(modules or {}):
        spec.loader.exec_module(module)
    return module


def import_package(root: Path, name: str, submodules: tuple[str, ...] = ()) -> types.ModuleType:
    """Import the package folder `root` under the name `name` (its relative imports work under any name), and
    its `submodules`. A second call for the same folder and name returns the package already imported (its
    submodules stay cached in sys.modules, so a fresh parent would lack them)."""
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(root / "__init__.py"):
        for sub in submodules:
            importlib.import_module(f"{name}.{sub}")
        return loaded
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with modules_in_place({}):
        spec.loader.exec_module(module)
        for sub in submodules:
            importlib.import_module(f"{name}.{sub}")
    return module


def run_edited(path: Path, edits: Edits, names: dict[str, Any] | None = None,
               modules: dict[str, types.ModuleType] | None = None) -> dict[str, Any]:
    """Execute the whole edited file under a name other than __main__ (its main block does not run) and return
    its namespace; `names` are defined first (what the edits refer to, probes)."""
    tree = ast.fix_missing_locations(edits.visit(ast.parse(path.read_text(), str(path))))
    namespace: dict[str, Any] = {"__name__": f"reference_{path.stem}", "__file__": str(path), **(names or {})}
    with modules_in_place(modules or {}):
        exec(compile(tree, str(path), "exec"), namespace)
    return namespace


def find_body(tree: ast.AST, first: str) -> tuple[list[ast.stmt], int]:
    """The statement list (anywhere in the tree) holding a statement whose source starts with `first`."""
    for node in ast.walk(tree):
        for name in ("body", "orelse"):
            body = getattr(node, name, None)
            if isinstance(body, list):
                for i, stmt in enumerate(body):
                    if isinstance(stmt, ast.stmt) and ast.unparse(stmt).startswith(first):
                        return body, i
    raise LookupError(f"no statement starting with {first!r}: has the reference changed?")


def extract(path: Path, first: str, last: str, edits: Edits | None = None, function: str | None = None
            ) -> types.CodeType:
    """Compile the run of statements of `path` from the one starting with `first` to the one starting with `last`
    (same block, any depth: e.g. the loss block inside a training loop inside main()); with `function`, as the
    body of a function of that name taking no arguments (for a block that ends in `return`)."""
    tree = ast.parse(path.read_text(), str(path))
    body, start = find_body(tree, first)
    end = next(i for i in range(start, len(body)) if ast.unparse(body[i]).startswith(last))
    statements = body[start:end + 1]
    if function is not None:
        wrapper = ast.parse(f"def {function}():\n    pass").body[0]
        wrapper.body = statements
        statements = [wrapper]
    module = ast.Module(body=statements, type_ignores=[])
    if edits is not None:
        module = edits.visit(module)
    return compile(ast.fix_missing_locations(module), str(path), "exec")


def extract_function(path: Path, name: str, edits: Edits | None = None) -> types.CodeType:
    """Compile the definition of function `name`, wherever it is nested (e.g. a helper defined inside main())."""
    tree = ast.parse(path.read_text(), str(path))
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise LookupError(f"{path} defines no function {name!r}: has the reference changed?")
    module = ast.Module(body=[node], type_ignores=[])
    if edits is not None:
        module = edits.visit(module)
    return compile(ast.fix_missing_locations(module), str(path), "exec")


class Recorder:
    """A probe: every call stores the named locals it was given (tensors detached and cloned, with their .grad
    under NAME.grad; an optimizer as its current lr)."""

    def __init__(self, keep: tuple[str, ...]):
        self.keep = keep
        self.calls: list[dict[str, Any]] = []

    def __call__(self, scope: dict[str, Any]) -> None:
        row = {}
        for name in self.keep:
            value = scope.get(name)
            if isinstance(value, torch.optim.Optimizer):
                value = value.param_groups[0]["lr"]
            if isinstance(value, torch.Tensor):
                grad = value.grad if value.is_leaf else None
                value = value.detach().clone()
                if grad is not None:
                    row[name + ".grad"] = grad.detach().clone()
            row[name] = value
        self.calls.append(row)


def optional_module(name: str, **attrs: Any) -> dict[str, types.ModuleType]:
    """{name: stub} when `name` cannot be imported here (e.g. wandb, einops: imported, unused on this path)."""
    try:
        importlib.import_module(name)
        return {}
    except ImportError:
        return {name: stub_module(name, **attrs)}


# ----------------------------------------------------------------------------------------- the same inputs


def digits(classes: int, per_class: int | list[int], size: int, channels: int, mean: tuple[float, ...],
           std: tuple[float, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, bilinearly resized to size x size, repeated to `channels`, normalised with
    mean/std: images [N,C,H,W] and labels [N], class-major (per_class: one count or one count per class)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    counts = [per_class] * classes if isinstance(per_class, int) else list(per_class)
    rows = np.concatenate([rng.permutation(np.flatnonzero(data.target == c))[:n] for c, n in enumerate(counts)])
    x = torch.tensor(data.images[rows] / 16.0, dtype=torch.float32).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, channels, 1, 1)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x, torch.tensor(data.target[rows], dtype=torch.long)


@torch.no_grad()
def prime_batchnorm(model: nn.Module, images: torch.Tensor, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm non-trivial state: affine parameters around (1, 0) and running statistics averaged
    over forward passes of `images` and of `images` + N(0, 1) noise (a stand-in for a teacher trained on natural
    images, whose statistics cover the noisy inputs of a recover run; no training is needed for parity)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    noisy = images + torch.randn(images.shape, generator=generator)
    for chunk in torch.cat([images, noisy]).split(max(2, len(images) // 2)):
        model(chunk)
    for m in layers:
        m.momentum = 0.1
    return model.eval()


def copy_weights(src: nn.Module, dst: nn.Module, skip_dst: tuple[str, ...] = ()) -> int:
    """Load src's state_dict into dst entry by entry in registration order (names may differ, shapes must not);
    dst entries whose name starts with one of `skip_dst` are left as they are (modules src does not have).
    Returns the number of tensors copied."""
    ours = list(src.state_dict().items())
    theirs = [(k, v) for k, v in dst.state_dict().items() if not k.startswith(skip_dst)]
    if len(ours) != len(theirs):
        raise ValueError(f"{type(src).__name__} has {len(ours)} state tensors, {type(dst).__name__} {len(theirs)}")
    mapped = {}
    for (k_src, v_src), (k_dst, v_dst) in zip(ours, theirs):
        if v_src.shape != v_dst.shape:
            raise ValueError(f"shape mismatch: {k_src} {list(v_src.shape)} vs {k_dst} {list(v_dst.shape)}")
        mapped[k_dst] = v_src.clone()
    dst.load_state_dict(mapped, strict=not skip_dst)
    return len(mapped)


# ------------------------------------------------------------------------------------------------ reporting


def difference(ours: Any, ref: Any) -> tuple[float, float]:
    """(max |ours − ref|, max |ours − ref| / max |ref|) in float64."""
    a = (ours.detach() if isinstance(ours, torch.Tensor) else torch.as_tensor(np.asarray(ours))).double()
    b = (ref.detach() if isinstance(ref, torch.Tensor) else torch.as_tensor(np.asarray(ref))).double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: ours {list(a.shape)}, reference {list(b.shape)}")
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


@dataclass
class Report:
    """The table a script prints: one row per piece."""

    title: str
    reference: Path
    commit: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def close(self, piece: str, ours: Any, ref: Any, tol: float = ROUNDING, note: str = "") -> None:
        """A numeric piece: ok when the relative difference is within `tol`, else 'explained' with a note."""
        self.value(piece, *difference(ours, ref), tol=tol, note=note)

    def value(self, piece: str, abs_diff: float, rel_diff: float, tol: float = ROUNDING, note: str = "") -> None:
        """A row from a difference measured by the caller (e.g. what is left after an explained part)."""
        ok = rel_diff <= tol
        self.rows.append({"piece": piece, "max_abs": abs_diff, "max_rel": rel_diff,
                          "verdict": "ok" if ok else ("explained" if note else "DIFF"), "note": "" if ok else note})

    def same(self, piece: str, equal: bool, detail: str = "", note: str = "") -> None:
        """A discrete piece (indices, masks, counts): ok when equal, else 'explained' with a note."""
        self.rows.append({"piece": piece, "max_abs": None, "max_rel": None, "detail": detail,
                          "verdict": "ok" if equal else ("explained" if note else "DIFF"),
                          "note": "" if equal else note})

    def print(self, edits: list[Edits] = (), json_path: Path | None = None) -> int:
        print(f"\n{self.title}")
        print(f"reference: {self.reference} @ {self.commit}")
        for e in edits:
            print(f"reference edits: {e.summary()}")
        width = max(len(r["piece"]) for r in self.rows)
        print(f"\n{'piece':<{width}}  {'max abs diff':>12}  {'max rel diff':>12}  verdict")
        for r in self.rows:
            if r["max_abs"] is None:
                cells = f"{r.get('detail', ''):>27}"
            else:
                cells = f"{r['max_abs']:>12.3e}  {r['max_rel']:>12.3e}"
            print(f"{r['piece']:<{width}}  {cells}  {r['verdict']}")
        notes = [r for r in self.rows if r["note"]]
        for r in notes:
            print(f"\n* {r['piece']}: {r['note']}")
        if json_path is not None:
            json_path.write_text(json.dumps({"title": self.title, "reference_commit": self.commit, "rows": self.rows},
                                            indent=1))
        failed = [r["piece"] for r in self.rows if r["verdict"] == "DIFF"]
        print(f"\n{len(self.rows) - len(failed)}/{len(self.rows)} pieces at float rounding or explained"
              + (f"; UNEXPLAINED: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0


# ---------------------------------------------------------------------------- the recover loop (CDA, INFER)


class ReplayAugment:
    """ddbench's RecoverAugment interface, replaying the reference's recorded draws: draws[t] for step t."""

    def __init__(self, draws: list[Any]):
        self.draws = draws

    def draw(self, groups: int, height: int, width: int, step: int, total: int, generator: torch.Generator) -> Any:
        return self.draws[step]

    @staticmethod
    def apply(x: torch.Tensor, draw: Any) -> torch.Tensor:
        from ddbench.methods.recover import RecoverAugment

        return RecoverAugment.apply(x, draw)


def recover_pieces(teacher: nn.Module, bn: Any, param: torch.Tensor, compose: Callable[[torch.Tensor], torch.Tensor],
                   labels: torch.Tensor, r_bn: float, draw: Any) -> dict[str, torch.Tensor]:
    """ddbench's pieces of one recover step at `param`: the augmented batch [G,B,C,H,W], per group CE, BN loss R
    and total CE + r_bn·R [G], and the gradient of Σ_g total on param (ddbench.methods.recover.recover_loss)."""
    from ddbench.methods.recover import recover_loss

    p = param.detach().clone().requires_grad_(True)
    x = ReplayAugment.apply(compose(p), draw)
    loss, total = recover_loss(teacher, bn, x, labels, r_bn)
    r = bn.value().detach()
    (grad,) = torch.autograd.grad(loss, p)
    with torch.no_grad():  # CE alone: r_bn = 0 (total − r_bn·R would cancel where R is large)
        ce = recover_loss(teacher, bn, x, labels, 0.0)[1]
    return {"augmented": x.detach(), "CE": ce, "R": r, "total": total, "grad": grad}


def stack_steps(rows: list[list[dict[str, Any]]], key: str) -> torch.Tensor:
    """rows[g][t][key] → tensor [T, G, ...] (the reference's per-group records, step-major)."""
    return torch.stack([torch.stack([torch.as_tensor(r[key]) for r in group]) for group in rows], 1)


KINK_NOTE = ("float32 only: at step {step}, where the two sides differ most, the reference's float32 gradient is "
             "{ref_err:.1e} (relative) from the float64 gradient at the same point and ddbench's {our_err:.1e}: one "
             "side (or both) lands on the other side of a ReLU kink, a ReLU input within float32 rounding of 0 that "
             "last-bit differences switch (the two sides sum in different orders: ddbench forwards all groups in "
             "one batch, and crops with grid_sample), and the gradient jumps there. With both sides in float64 "
             "(next row) the gradients agree to {rel64:.1e}.")


def gradient_rows(report: Report, piece: str, ours: torch.Tensor, ref: torch.Tensor, ours64: torch.Tensor,
                  ref64: torch.Tensor, exact_at: Callable[[int], torch.Tensor]) -> None:
    """Two rows: a float32 gradient [T, ...] of both sides, and the float64 one of both sides. Where the float32
    pair differs beyond rounding, the note measures how accurate float32 is there: at the step t with the largest
    difference, both float32 gradients against ddbench's float64 gradient at the same point, exact_at(t)."""
    abs32, rel32 = difference(ours, ref)
    abs64, rel64 = difference(ours64, ref64)
    note = ""
    if rel32 > ROUNDING:
        t = int((ours - ref).flatten(1).abs().max(1).values.argmax())
        exact, scale = exact_at(t).to(ref.dtype), float(ref[t].abs().max())
        note = KINK_NOTE.format(step=t, ref_err=float((ref[t] - exact).abs().max()) / scale,
                                our_err=float((ours[t] - exact).abs().max()) / scale, rel64=rel64)
    report.value(piece, abs32, rel32, note=note)
    report.value(f"{piece}, float64", abs64, rel64)


ADAM_EPS = 1e-8
DRIFT_NOTE = ("the two runs start from the same images and replay the same draws, but rounding-level differences "
              "(amplified by Adam where |g| is near eps, see the 1-step rows, or by a ReLU input within rounding "
              "of 0) grow from step to step: every Adam step is close to lr·sign(gradient) and the BN loss couples "
              "all pixels of a group (chaotic growth, not a different method); every per-step piece computed at "
              "the reference's own iterates is at rounding.")


def first_step_rows(report: Report, label: str, ours: torch.Tensor, ref: torch.Tensor, g_ours: torch.Tensor,
                    g_ref: torch.Tensor, lr: float) -> None:
    """The iterate after one Adam step from the same start, as two rows: the raw difference, and what is left of
    it beyond what the two gradients predict. Adam's first update is lr·g/(|g| + eps), so gradients g_ours, g_ref
    give updates that differ by exactly lr·|g_ours/(|g_ours| + eps) − g_ref/(|g_ref| + eps)|: large where |g| is
    near eps = 1e-8 (rounding amplified) or where the gradients differ in sign (a ReLU kink); a clamp after the
    step can only shrink a difference."""
    predicted = lr * (g_ours / (g_ours.abs() + ADAM_EPS) - g_ref / (g_ref.abs() + ADAM_EPS)).abs()
    observed = (ours - ref).abs()
    scale = float(ref.abs().max())
    big = observed > 1e-4
    note = (f"Adam's first update is lr·g/(|g| + 1e-8), so the updates differ where the two gradients differ in "
            f"sign (a ReLU kink, see the gradient row) or where |g| is near eps: {int(big.sum())} of {big.numel()} "
            f"entries differ by more than 1e-4; the next row subtracts exactly the predicted "
            f"lr·|Δ(g/(|g| + eps))| and what is left is rounding.")
    report.close(f"{label}: after 1 step", ours, ref, note=note)
    excess = float((observed - predicted).clamp_min(0).max())
    report.value(f"{label}: after 1 step, beyond lr·Δ(g/(|g|+eps))", excess, excess / scale)
