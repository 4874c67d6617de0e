"""The repository's shape: stages are peers over one shared core, files keep one role, and the
install creates one ``distillery`` namespace."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from distillery.components.core import registry

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
MAX_LINES = 450


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions, as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def stage_imports(path: Path) -> set[str]:
    """The ``distillery.components`` packages (stages or ``core``) ``path`` imports."""
    return {name.split(".")[2] for name in imported_modules(path)
            if name.startswith("distillery.components.") and len(name.split(".")) > 2}


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_registry_stage_is_its_own_package():
    packages = {p.name for p in COMPONENTS.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"core", *registry.STAGES}


@pytest.mark.parametrize("stage", registry.STAGES)
def test_a_stage_imports_only_the_core_and_itself(stage):
    crossings = {str(path.relative_to(ROOT)): sorted(stage_imports(path) - {"core", stage})
                 for path in python_files(COMPONENTS / stage)}
    assert {path: found for path, found in crossings.items() if found} == {}


def test_the_core_imports_no_stage():
    crossings = {str(path.relative_to(ROOT)): sorted(stage_imports(path) - {"core"})
                 for path in python_files(COMPONENTS / "core")}
    assert {path: found for path, found in crossings.items() if found} == {}


def test_the_import_rule_catches_a_crossing(tmp_path):
    """The rule above can fail: a function-level import of another stage is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from distillery.components.selection.pool import Pool\n")
    assert stage_imports(sample) == {"selection"}


@pytest.mark.parametrize("path", python_files(COMPONENTS) + python_files(ROOT / "pipelines"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_long_files_say_their_one_role(path):
    """A file over ~450 lines is allowed only when its docstring states its single role."""
    if len(path.read_text().splitlines()) <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "One role:" in docstring, f"{path.relative_to(ROOT)} is long; split it or say its one role"


@pytest.mark.parametrize("stage", registry.STAGES)
def test_each_stage_has_one_component_taking_the_method_name(stage):
    """No hand-written per-method adapters: a stage's component.py defines one KFP component per
    stage signature (the retraining check is a pipeline step, not a method)."""
    tree = ast.parse((COMPONENTS / stage / "component.py").read_text())
    components = [node for node in tree.body if isinstance(node, ast.FunctionDef)
                  and any("component" in ast.unparse(d) for d in node.decorator_list)]
    methods = [node for node in components if node.args.args and node.args.args[0].arg == "method"]
    assert len(methods) == 1
    assert [node.name for node in components if node not in methods] in ([], ["check_retraining"])


def test_package_list_names_every_package_folder():
    configured = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"distillery." + ".".join(init.parent.relative_to(ROOT).parts)
               for base in ("components", "pipelines") for init in (ROOT / base).rglob("__init__.py")
               if "__pycache__" not in init.parts}
    assert configured == folders


def test_the_built_wheel_installs_only_the_distillery_namespace(tmp_path):
    """What ``pip install .`` puts into site-packages: the wheel's top-level names. Built from a copy,
    so setuptools' build folders never land in the work tree."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "data", "benchmarks", "tests", "__pycache__", "*.egg-info", ".distillery", "local_outputs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("distillery-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"distillery", next(t for t in tops if t.endswith(".dist-info"))}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "distillery/pipelines/configs/default.yaml" in names  # package data travels with it
    assert "distillery/components/core/registry.py" in names
