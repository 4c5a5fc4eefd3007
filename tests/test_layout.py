"""The four packages load from this repo; imports run one way: app → saebench → trainers → store."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["store", "trainers", "saebench", "app"]
# What each package may import from the others.
ALLOWED = {
    "store": set(),
    "trainers": {"store"},
    "saebench": {"store", "trainers"},
    "app": {"store", "trainers", "saebench"},
}


@pytest.mark.parametrize("name", PACKAGES)
def test_package_loads_from_this_repo(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == ROOT / name


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_imports_run_one_way(name):
    for path in sorted((ROOT / name).rglob("*.py")):
        bad = _imported_packages(path) - ALLOWED[name] - {name}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
