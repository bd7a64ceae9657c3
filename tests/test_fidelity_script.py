"""benchmarks/fidelity.py: every command it runs is a valid ddbench-run config, marked shortened (off the board)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from ddbench.evaluation import EvalProtocol
from ddbench.pipeline import check_method, resolved_config, shortened_settings

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("set_name", ["teacher", "matching"])
def test_every_evidence_command_composes_and_is_marked_shortened(fidelity, set_name, tmp_path):
    with initialize_config_module(config_module="ddbench.conf", version_base="1.3"):
        for dataset in ("digits", "fashion_mnist"):
            table = fidelity.variants(set_name, dataset)
            for tag, overrides in table.items():
                args = [*overrides, "seed=1", "eval.seed_base=1", "eval.num_seeds=1"]
                cfg = compose("config", overrides=args)
                cfg.paths.output = str(tmp_path)
                plain = resolved_config(cfg, overrides=args)
                check_method(plain)
                EvalProtocol.from_dict(plain["eval"])
                assert plain["dataset"]["name"] == dataset, tag
                assert shortened_settings(plain, args), f"{set_name}/{dataset}/{tag} would land on the leaderboard"
            if set_name == "teacher":  # the baselines share the method's teacher and protocol
                for method in ("cda", "infer"):
                    for baseline in ("noise", "random_relabelled"):
                        assert table[f"{method}_{baseline}"][: len(table[method])] == table[method]
            else:  # DataDAM and DM get the same iteration budget and real batch
                assert [o for o in table["dm"] if o != "method=dm"] == [
                    o for o in table["datadam"] if o != "method=datadam"]


def test_list_prints_one_command_per_variant_and_seed(fidelity, capsys, tmp_path):
    assert fidelity.main(["matching", "--dataset", "digits", "--list", "--seeds", "0", "1", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * len(fidelity.variants("matching", "digits"))
    assert all("seed=" in line and f"paths.records={tmp_path}" in line for line in lines)
    assert not any(tmp_path.iterdir())  # --list runs nothing
