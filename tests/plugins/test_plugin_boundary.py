"""Built-in plugins are written as a third party would write them: from mpsearch they import
only :mod:`mpsearch.api`, and never another plugin (a package may import its own modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mpsearch.api

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
FACE = "mpsearch.api"


def _absolute(module: str | None, level: int, package: tuple[str, ...]) -> tuple[str, ...]:
    """The dotted path under plugins/ a relative import names, as parts."""
    base = package[:len(package) - (level - 1)] if level > 1 else package
    return (*base, *(module.split(".") if module else ()))


def boundary_violations(path: Path, root: Path = PLUGINS) -> list[str]:
    """Each import in ``path`` that crosses the plugin boundary, as ``"line N: what"``.

    Allowed: :mod:`mpsearch.api`; anything outside mpsearch; and, in a plugin package
    (a folder under ``root``), the package's own modules. Forbidden: any other mpsearch
    module, and any other plugin (``mpsearch.plugins.<x>`` or a relative import out of
    the file's own package).
    """
    rel = path.relative_to(root).with_suffix("").parts
    own = rel[:1] if len(rel) > 1 else ()  # the plugin package this file belongs to, if any
    package = rel[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "mpsearch":
            targets = [f"mpsearch.{alias.name}" for alias in node.names]  # from mpsearch import api
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            targets = [node.module or ""]
        elif isinstance(node, ast.ImportFrom):
            parts = _absolute(node.module, node.level, package)
            if not own or parts[:1] != own:
                found.append(f"line {node.lineno}: relative import out of its package "
                             f"({'.' * node.level}{node.module or ''})")
            continue
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] != "mpsearch" or target == FACE:
                continue
            if parts[:2] == ["mpsearch", "plugins"] and own and tuple(parts[2:3]) == own:
                continue
            what = "another plugin" if parts[:2] == ["mpsearch", "plugins"] else "a host module"
            found.append(f"line {node.lineno}: {target} ({what}; import from {FACE})")
    return found


PLUGIN_FILES = sorted(PLUGINS.rglob("*.py"))


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=[str(p.relative_to(PLUGINS)) for p in PLUGIN_FILES])
def test_plugin_imports_only_the_face(path):
    assert boundary_violations(path) == []


def test_the_check_finds_every_kind_of_crossing(tmp_path):
    root = tmp_path / "plugins"
    (root / "meth").mkdir(parents=True)
    bad = root / "meth" / "strategy.py"
    bad.write_text(
        "from mpsearch.api import Strategy\n"  # allowed
        "from .machinery import thing\n"  # allowed: its own package
        "from mpsearch.plugins.meth.machinery import other\n"  # allowed: its own package
        "import torch\n"  # allowed
        "from mpsearch.quant import quantize_model\n"
        "import mpsearch.training\n"
        "from mpsearch.plugins.strategy_random import Candidate\n"
        "from ..objective_latency import Latency\n"
        "def late():\n"
        "    from mpsearch.trial import run_trial\n")
    single = root / "strategy_x.py"
    single.write_text("from .strategy_random import Candidate\nfrom mpsearch import api, hookimpl\n")
    assert boundary_violations(bad, root) == [
        "line 5: mpsearch.quant (a host module; import from mpsearch.api)",
        "line 6: mpsearch.training (a host module; import from mpsearch.api)",
        "line 7: mpsearch.plugins.strategy_random (another plugin; import from mpsearch.api)",
        "line 8: relative import out of its package (..objective_latency)",
        "line 10: mpsearch.trial (a host module; import from mpsearch.api)",
    ]
    assert boundary_violations(single, root) == [
        "line 1: relative import out of its package (.strategy_random)",
        "line 2: mpsearch.hookimpl (a host module; import from mpsearch.api)",
    ]


def test_every_name_the_face_promises_exists():
    names = mpsearch.api.__all__
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(mpsearch.api, name)]
    assert missing == []


def test_the_package_does_not_load_the_face():
    import subprocess
    import sys

    code = "import sys, mpsearch; print('mpsearch.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
