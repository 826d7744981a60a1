"""The host's modules and the built-in plugins import each other without circles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_itself_through_others():
    tool = _graph_tool()
    mods = tool.modules(str(ROOT))
    # imports inside functions count: they tie the two modules together all the same
    assert tool.circles(tool.imports(mods), mods) == []


def test_the_graph_tool_finds_a_circle(tmp_path):
    tool = _graph_tool()
    (tmp_path / "mpsearch").mkdir()
    (tmp_path / "mpsearch" / "a.py").write_text("from mpsearch.b import x\n")
    (tmp_path / "mpsearch" / "b.py").write_text("def f():\n    from mpsearch import a\n")
    mods = tool.modules(str(tmp_path))
    assert tool.circles(tool.imports(mods), mods) == [["mpsearch.a", "mpsearch.b"]]
