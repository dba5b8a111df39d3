"""Each DVC stage's code deps equal the import closure of its stage module (docs/CONTRIBUTING.md, "Code deps").

Too few deps and `dvc repro` silently keeps outputs made by old code; too many and an unrelated edit re-runs
expensive stages. The closure comes from the static import graph (``tests/import_graph.py``); the stage module
from the command (``vaura <name> ...`` → ``vaura/cli.py:COMMANDS[name]``). For ``foreach``/``matrix`` stages the
``do:`` template (or the stage itself) is read, so every generated stage is checked through its template.
"""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from import_graph import closure, import_graph, modules, section


def excluded(repo_root: Path) -> set[str]:
    """The deliberately left-out files: backticked paths of the bullet list under "Code deps in dvc.yaml"."""
    text = section((repo_root / "docs" / "CONTRIBUTING.md").read_text(), "Code deps in dvc.yaml")
    return set(re.findall(r"^- `(vaura/[^`]+)`", text, re.M))


def commands(repo_root: Path) -> dict[str, str]:
    """``vaura`` sub-command → module, read from ``vaura/cli.py:COMMANDS`` without importing it."""
    tree = ast.parse((repo_root / "vaura" / "cli.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMMANDS":
            return {k: v[0] for k, v in ast.literal_eval(node.value).items()}
    raise AssertionError("vaura/cli.py: no COMMANDS table")


def stage_templates(repo_root: Path) -> dict[str, dict]:
    """Stage name → the mapping that holds its ``cmd`` and ``deps`` (``do:`` of a ``foreach`` stage)."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    return {name: (stage["do"] if "do" in stage else stage) for name, stage in stages.items()}


def stage_module(cmd: str, table: dict[str, str]) -> str:
    """The module a stage's command runs: ``vaura <name> ...`` or ``python -m <module> ...``."""
    words = shlex.split(cmd if isinstance(cmd, str) else " ".join(cmd))
    if words[0] == "vaura" and words[1] in table:
        return table[words[1]]
    if "-m" in words:
        return words[words.index("-m") + 1]
    raise AssertionError(f"cannot tell which vaura module `{cmd}` runs")


def code_deps(deps: list) -> set[str]:
    """The ``vaura/...`` entries of a deps list (data deps and ``${...}`` paths are not code)."""
    return {str(next(iter(d)) if isinstance(d, dict) else d).rstrip("/") for d in deps
            if str(next(iter(d)) if isinstance(d, dict) else d).startswith("vaura/")}


def expected_deps(repo_root: Path, module: str, skip: set[str]) -> set[str]:
    """Files of the module's closure as deps: a package folder when the closure holds all of its files."""
    files = modules(repo_root)
    by_path = {p.relative_to(repo_root).as_posix(): m for m, p in files.items()}
    skip_modules = {by_path[p] for p in skip if p in by_path}
    reached = closure(import_graph(repo_root), module, skip_modules)
    needed = {files[m].relative_to(repo_root).as_posix() for m in reached}
    deps = set(needed)
    for folder in sorted({str(Path(p).parent) for p in needed}, key=len):
        inside = {p for p in by_path if p.startswith(folder + "/")}
        if folder != "vaura" and inside <= needed and not any(folder.startswith(d + "/") for d in deps):
            deps = {d for d in deps if not d.startswith(folder + "/")} | {folder}
    return deps


def covered(repo_root: Path, deps: set[str]) -> set[str]:
    """The ``.py`` files a set of deps stands for (a folder dep covers every file in it)."""
    out = set()
    for dep in deps:
        path = repo_root / dep
        out |= ({p.relative_to(repo_root).as_posix() for p in path.rglob("*.py")} if path.is_dir() else {dep})
    return out


def mismatch(repo_root: Path, name: str, template: dict, table: dict[str, str], skip: set[str]) -> str:
    """"" when the stage's code deps equal its closure, else what to add and what to remove."""
    module = stage_module(template["cmd"], table)
    want = expected_deps(repo_root, module, skip)
    have = code_deps(template.get("deps", []))
    missing = sorted(covered(repo_root, want) - covered(repo_root, have))
    extra = sorted(covered(repo_root, have) - covered(repo_root, want))
    if not missing and not extra:
        return ""
    return (f"dvc.yaml stage {name!r} ({module}): missing {missing}, not imported {extra}; "
            f"the exact deps are: {sorted(want)}")


def test_dvc_code_deps_equal_each_stage_import_closure(repo_root: Path) -> None:
    table, skip = commands(repo_root), excluded(repo_root)
    assert skip and all((repo_root / p).is_file() for p in skip), f"docs/CONTRIBUTING.md exclusions: {skip}"
    problems = [p for name, t in stage_templates(repo_root).items() if (p := mismatch(repo_root, name, t, table, skip))]
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str], dvc: dict) -> Path:
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": dvc}))
    return tmp_path


FILES = {
    "vaura/__init__.py": "",
    "vaura/tracking.py": "from vaura import media\n",
    "vaura/media.py": "",
    "vaura/stages/__init__.py": "",
    "vaura/stages/score.py": "from vaura import tracking\ndef run():\n    from vaura.curation.scoring import x\n",
    "vaura/curation/__init__.py": "",
    "vaura/curation/scoring.py": "from vaura.onsets import y\n",
    "vaura/onsets.py": "",
}
TABLE = {"score": "vaura.stages.score"}
SKIP = {"vaura/tracking.py", "vaura/__init__.py"}


@pytest.mark.parametrize("deps, verdict", [
    (["data/clips", "vaura/stages", "vaura/curation", "vaura/onsets.py"], ""),
    (["vaura/stages/score.py", "vaura/stages/__init__.py", "vaura/curation/__init__.py", "vaura/curation/scoring.py",
      "vaura/onsets.py"], ""),
    (["vaura/stages", "vaura/curation"], "missing ['vaura/onsets.py'], not imported []"),
    (["vaura/stages", "vaura/curation", "vaura/onsets.py", "vaura/media.py"],
     "missing [], not imported ['vaura/media.py']"),
])
def test_checker_wants_the_lazy_closure_and_nothing_reached_only_through_exclusions(tmp_path, deps, verdict) -> None:
    """A function-level import counts; media.py, reached only through the excluded tracking.py, must not be listed."""
    root = _tree(tmp_path, FILES, {"score": {"cmd": "vaura score --params params.yaml", "deps": deps}})
    got = mismatch(root, "score", stage_templates(root)["score"], TABLE, SKIP)
    assert (verdict in got) if verdict else got == ""


def test_foreach_stages_are_checked_through_their_template(tmp_path) -> None:
    stage = {"foreach": ["a", "b"], "do": {"cmd": "vaura score --variant ${item}", "deps": ["vaura/stages"]}}
    root = _tree(tmp_path, FILES, {"score": stage})
    assert "missing ['vaura/curation/__init__.py', 'vaura/curation/scoring.py', 'vaura/onsets.py']" in mismatch(
        root, "score", stage_templates(root)["score"], TABLE, SKIP)
