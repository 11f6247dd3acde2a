"""Every third-party module imported by tests/, benchmarks/ and notebooks/ is declared in pyproject.toml.

CI runs on a machine that keeps what earlier sessions installed by hand, so an undeclared import can pass there
and fail on a fresh machine (it happened with ``hypothesis``). This test reads the imports statically (``ast``,
imports inside functions included) and maps each top-level module to the distribution that installs it.
tests/fixtures/ is left out: its generators import the reference repositories' own modules and run beside them.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"dwakd", "baselines", "conftest", "tests", "benchmarks", "notebooks"}
# which extras each folder may rely on, besides the core dependencies
FOLDERS = {"tests": ["dev"], "benchmarks": ["dev", "bench"], "notebooks": ["dev"]}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: list[str]) -> set[str]:
    """Distribution names in [project].dependencies plus the given optional-dependency groups."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {_norm(re.match(r"[A-Za-z0-9_.\-]+", s).group(0)) for s in specs}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(path: Path) -> set[str]:
    local = {p.stem for p in path.parent.glob("*.py")}
    return {m for m in imported_modules(path)
            if m not in sys.stdlib_module_names and m not in FIRST_PARTY and m not in local}


@functools.cache
def _installed() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(module: str) -> set[str]:
    """Distributions that install ``module``; for one that is not installed here, its own name."""
    return {_norm(d) for d in _installed().get(module, [module])}


FILES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
               if "fixtures" not in p.relative_to(ROOT).parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_declared(path):
    allowed = declared(FOLDERS[path.relative_to(ROOT).parts[0]])
    missing = {m: sorted(distributions(m)) for m in third_party(path) if not distributions(m) & allowed}
    assert not missing, (f"{path.relative_to(ROOT)} imports {missing} (module: distributions), which pyproject.toml "
                         f"does not declare; add them to [project].dependencies or the folder's extra")


def test_checker_catches_an_undeclared_import(tmp_path):
    """The check can fail: a file importing a module that no requirement names is reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom hypothesis import given\ndef f():\n    import surely_not_declared_xyz\n")
    undeclared = {m for m in third_party(probe) if not distributions(m) & declared(["dev"])}
    assert undeclared == {"surely_not_declared_xyz"}


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    """.ci/run creates its own virtual environment and runs README.md's "Run the tests" command verbatim."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Run the tests**", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert block in ci.splitlines(), f"README's test command {block!r} is not a line of .ci/run"
    assert "-m venv" in ci and ci.index("-m venv") < ci.index(block)
