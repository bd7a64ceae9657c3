"""Evaluation settings taken from the artifact being evaluated (`eval.artifact_teacher`, set by eval=infer_dyn).

INFER+Dyn relabels with the M teachers that built the UFCs and trains static_epochs / (M + 1) epochs (the
materialised set holds M + 1 images per real one). An INFER artifact records its teachers' resolved config in
meta["teacher"]; with it, `eval_config_for_artifact` replaces

* eval.teacher by that config, where eval.teacher still equals the protocol file's block (conf/eval/<name>.yaml
  with its defaults), and then
* eval.epochs / eval.epochs_no_aug, where they still equal the file's values, by file_epochs · (M_file + 1) //
  (M + 1), M_file being the file's number of teachers (infer_dyn: 80 · 5 // (M + 1) = 400 // (M + 1); only for
  artifacts with UFCs: the no-UFC variant of small IPCs trains on its real images alone).

Any other value (an override, an experiment preset, smoke=true's reductions) is kept: explicit settings win. A
value set to exactly the file's own is indistinguishable from the file's; eval.artifact_teacher=false keeps the
file's settings whatever the artifact holds.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
from typing import Any

from omegaconf import OmegaConf

from ddbench.evaluation.protocol import EvalProtocol, _from_dict
from ddbench.training.recipe import TeacherConfig

log = logging.getLogger(__name__)
UFC_RULE = "real_plus_ufc"  # meta["decode"]["kind"] of an INFER artifact with UFCs


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def declared_eval_config(name: str) -> dict[str, Any] | None:
    """The protocol file conf/eval/<name>.yaml of the package merged over its defaults (plain dict), or None when
    ddbench has no such file (a protocol of another package) or its defaults list is not plain names."""
    path = importlib.resources.files("ddbench.conf") / "eval" / f"{name}.yaml"
    if not path.is_file():
        return None
    raw = OmegaConf.to_container(OmegaConf.create(path.read_text())) or {}
    defaults = raw.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    out: dict[str, Any] = {}
    for entry in defaults:
        if entry == "_self_":
            _merge(out, raw)
            continue
        base = declared_eval_config(entry) if isinstance(entry, str) and entry != name else None
        if base is None:
            return None
        _merge(out, base)
    return out


def _teacher(block: Any) -> TeacherConfig:
    return _from_dict(TeacherConfig, dict(block or {}), "eval.teacher")


def eval_config_for_artifact(eval_cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """`eval_cfg` (the run's `eval` block) with the teacher and epochs the artifact's `meta` calls for (see the
    module docstring); `eval_cfg` itself when eval.artifact_teacher is off or the artifact names no teachers."""
    if not eval_cfg.get("artifact_teacher") or not isinstance(meta.get("teacher"), dict):
        if eval_cfg.get("artifact_teacher") and (meta.get("decode") or {}).get("teachers"):
            log.warning("this INFER artifact names its teachers %s but not their recipe (it predates meta "
                        "'teacher'); eval.teacher relabels instead. Distill it again to relabel with its own "
                        "teachers.", meta["decode"]["teachers"])
        return eval_cfg
    declared = declared_eval_config(str(eval_cfg.get("name")))
    if declared is None:
        log.warning("eval.artifact_teacher: no protocol file conf/eval/%s.yaml to tell explicit settings from; "
                    "eval.teacher and eval.epochs are kept.", eval_cfg.get("name"))
        return eval_cfg
    if _teacher(eval_cfg.get("teacher")) != _teacher(declared.get("teacher")):
        return eval_cfg  # eval.teacher was set: it relabels, with the protocol's epochs
    out = copy.deepcopy(eval_cfg)
    artifact_teacher = _teacher(meta["teacher"])
    out["teacher"] = artifact_teacher.to_dict()
    m, m_file = len(artifact_teacher.models), len(_teacher(declared.get("teacher")).models)
    changed = []
    if (meta.get("decode") or {}).get("kind") == UFC_RULE:
        for key in ("epochs", "epochs_no_aug"):
            if key in declared and out.get(key) == declared[key]:
                out[key] = max(1, int(declared[key]) * (m_file + 1) // (m + 1))
                changed.append(f"{key} {out[key]} = {int(declared[key]) * (m_file + 1)} // ({m} + 1)")
    log.info("eval %s: relabelling with the artifact's %d teachers %s%s", eval_cfg.get("name"), m,
             artifact_teacher.models, f"; {', '.join(changed)}" if changed else "")
    return out


def protocol_for_artifact(protocol: EvalProtocol, meta: dict[str, Any]) -> EvalProtocol:
    """`protocol` with the teacher and epochs the artifact's `meta` calls for (`eval_config_for_artifact`)."""
    plain = protocol.to_dict()
    derived = eval_config_for_artifact(plain, meta)
    return protocol if derived is plain else EvalProtocol.from_dict(derived)
