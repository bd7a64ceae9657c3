"""benchmarks/parity/common.py: a reference package folder imports under any name, twice in one process."""
import importlib.util
import sys
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parent.parent / "benchmarks" / "parity" / "common.py"


@pytest.fixture()
def common():
    spec = importlib.util.spec_from_file_location("parity_common_under_test", COMMON)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture()
def package(tmp_path):
    root = tmp_path / "refpkg"
    (root / "methods").mkdir(parents=True)
    (root / "__init__.py").write_text("from . import util\n")
    (root / "util.py").write_text("VALUE = 7\n")
    (root / "methods" / "__init__.py").write_text("from ..util import VALUE\nDOUBLE = 2 * VALUE\n")
    yield root
    for name in [n for n in sys.modules if n == "ref_under_test" or n.startswith("ref_under_test.")]:
        del sys.modules[name]


def test_package_imports_under_another_name_with_its_submodules(common, package):
    module = common.import_package(package, "ref_under_test", ("methods",))
    assert module.util.VALUE == 7
    assert module.methods.DOUBLE == 14


def test_second_import_keeps_the_submodules(common, package):
    first = common.import_package(package, "ref_under_test", ("methods",))
    second = common.import_package(package, "ref_under_test", ("methods",))
    assert second is first
    assert second.methods.DOUBLE == 14
