"""The package's layering is a contract (pyproject.toml, [tool.importlinter]): stages import
only the layers below them. These tests run the real checker on the package, and on a copy with
one import that runs back up, to prove the contract is not vacuous."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "skipat_deploy"


def lint_imports(where: Path = ROOT) -> subprocess.CompletedProcess:
    """The checker on the ``skipat_deploy`` package found first from ``where``."""
    env = dict(os.environ, PYTHONPATH=str(where))
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=where, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    r = lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 kept, 0 broken" in r.stdout


def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path):
    pytest.importorskip("importlinter")
    copy = tmp_path / "skipat_deploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    report = copy / "quant" / "report.py"
    report.write_text(report.read_text() + "\nfrom ..commands.bundle import bundle  # noqa: E402\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert "skipat_deploy.quant.report -> skipat_deploy.commands.bundle" in r.stdout, r.stdout


@pytest.mark.parametrize("module,line,broken", [
    ("measure/evaluate.py", "from ..quant import quantize", "skipat_deploy.measure.evaluate -> skipat_deploy.quant"),
    ("bundle/manifest.py", "from ..npu.compile import compile_local", "skipat_deploy.bundle.manifest -> skipat_deploy.npu.compile"),
    ("npu/qnn.py", "from ..quant.cpu import quantize_cpu", "skipat_deploy.npu.qnn -> skipat_deploy.quant.cpu"),
])
def test_a_stage_that_runs_another_breaks_the_contract(tmp_path, module, line, broken):
    """Only a command chains stages: a measurement or the bundle that quantizes or compiles,
    or a compiler that quantizes, is refused by lint-imports."""
    pytest.importorskip("importlinter")
    copy = tmp_path / "skipat_deploy"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert broken in r.stdout, r.stdout


def test_no_module_imports_itself_back():
    """No import circle anywhere, inside a stage's package included (the layers contract only
    sees imports between layers)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("skipat_deploy")
    circles = [(a, b) for a in sorted(graph.modules)
               for b in graph.find_modules_directly_imported_by(a)
               if graph.chain_exists(importer=b, imported=a)]
    assert circles == []


def test_the_readmes_layout_block_names_every_module_and_only_those():
    """The README's layout block is checked against the tree: every module of the package is
    named there, and every module it names exists."""
    import re

    root = Path(__file__).parents[1]
    text = (root / "README.md").read_text().split("## Layout", 1)[1]
    block = text.split("```", 2)[1]
    named = set(re.findall(r"\b(\w+\.py)\b", block))
    package = root / "skipat_deploy"
    modules = {p.name for p in [*package.rglob("*.py"), *(root / "profiles").glob("*.py")]
               if p.name != "__init__.py"}
    assert modules - named == set(), "modules the README's layout block does not name"
    assert named - modules - {"cli.py"} == set(), "named in the README's layout, not in the tree"
