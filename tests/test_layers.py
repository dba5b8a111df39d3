"""No import in ``vaura/`` runs upward and none closes a circle; the floors are the table in docs/CONTRIBUTING.md."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from import_graph import cycles, import_graph, modules, section


def declared_layers(repo_root: Path) -> dict[str, int]:
    """Unit → floor, from the ``| layer | units |`` table under "## Layers" in docs/CONTRIBUTING.md."""
    text = section((repo_root / "docs" / "CONTRIBUTING.md").read_text(), "Layers")
    layers: dict[str, int] = {}
    for floor, cells in re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", text, re.M):
        for unit in re.findall(r"`([^`]+)`", cells):
            assert unit not in layers, f"docs/CONTRIBUTING.md: unit {unit!r} is declared on two floors"
            layers[unit] = int(floor)
    assert layers, "docs/CONTRIBUTING.md: no layer table under '## Layers'"
    return layers


def units(root: Path) -> dict[str, str]:
    """Module → unit: ``vaura/eval/fad.py`` → ``eval/``, ``vaura/media.py`` → ``media``, ``vaura/__init__.py`` →
    ``__init__``."""
    out = {}
    for module, path in modules(root).items():
        parts = path.relative_to(root / "vaura").parts
        out[module] = parts[0] + "/" if len(parts) > 1 else path.stem
    return out


def unit_graph(graph: dict[str, set[str]], unit: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        for dst in targets:
            if unit[src] != unit[dst]:
                out.setdefault(unit[src], set()).add(unit[dst])
    return out


def check(root: Path, layers: dict[str, int]) -> list[str]:
    """Every violation of the layer rules in the tree at ``root``, one line each."""
    graph, unit = import_graph(root), units(root)
    problems = [f"{m}: its unit {unit[m]!r} is not in the layer table of docs/CONTRIBUTING.md"
                for m in sorted(graph) if unit[m] not in layers]
    problems += [f"layer table: unit {u!r} has no file in vaura/" for u in sorted(set(layers) - set(unit.values()))]
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            a, b = unit[src], unit[dst]
            if a != b and a in layers and b in layers and layers[a] < layers[b]:
                problems.append(f"upward import: {src} (floor {layers[a]}, {a}) imports {dst} (floor {layers[b]}, {b})")
    problems += [f"import circle between modules: {' -> '.join(c)}" for c in cycles(graph)]
    problems += [f"import circle between units: {' -> '.join(c)}" for c in cycles(unit_graph(graph, unit))]
    return problems


def test_no_upward_import_and_no_circle(repo_root: Path) -> None:
    problems = check(repo_root, declared_layers(repo_root))
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = tmp_path / "vaura" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    return tmp_path


LAYERS = {"__init__": 0, "io": 0, "model/": 1, "eval/": 2}
BASE = {"__init__.py": "", "io.py": "", "model/__init__.py": "", "eval/__init__.py": ""}


@pytest.mark.parametrize("files, expected", [
    ({"model/core.py": "from vaura.io import x\n", "eval/fad.py": "from vaura.model.core import y\n"}, []),
    ({"model/core.py": "def f():\n    from vaura.eval import fad\n", "eval/fad.py": ""},
     ["upward import: vaura.model.core (floor 1, model/) imports vaura.eval.fad (floor 2, eval/)"]),
    ({"model/core.py": "import importlib\nm = importlib.import_module('vaura.eval.fad')\n", "eval/fad.py": ""},
     ["upward import: vaura.model.core (floor 1, model/) imports vaura.eval.fad (floor 2, eval/)"]),
    ({"model/a.py": "from . import b\n", "model/b.py": "def f():\n    from vaura.model.a import g\n"},
     ["import circle between modules: vaura.model.a -> vaura.model.b"]),
    ({"media.py": ""}, ["vaura.media: its unit 'media' is not in the layer table of docs/CONTRIBUTING.md"]),
])
def test_the_checker_sees_upward_lazy_dynamic_and_circular_imports(tmp_path, files, expected) -> None:
    """The rules bite: a function-level or importlib import upward, a relative-import circle, an undeclared file."""
    root = _tree(tmp_path, {**BASE, **files})
    assert check(root, LAYERS) == expected


def test_a_circle_between_units_on_one_floor_is_caught(tmp_path) -> None:
    root = _tree(tmp_path, {**BASE, "gen/__init__.py": "", "gen/a.py": "from vaura.eval.b import x\n",
                            "eval/b.py": "def f():\n    from vaura.gen.c import y\n", "gen/c.py": ""})
    assert check(root, {**LAYERS, "gen/": 2}) == ["import circle between units: eval/ -> gen/"]
