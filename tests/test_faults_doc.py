"""docs/FAULTS.md maps each promise to the tests that hold it: every test it names must exist."""
import ast
import re


def test_every_test_named_in_faults_md_exists(repo_root):
    text = (repo_root / "docs" / "FAULTS.md").read_text()
    named: list[tuple[str, str]] = []
    for row in text.splitlines():
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(\w+)`", row):
            current = file or current
            assert current, f"FAULTS.md: '::{name}' without a test file before it: {row}"
            named.append((current, name))
    assert len(named) > 30
    missing = []
    for file, name in named:
        tree = ast.parse((repo_root / "tests" / file).read_text())
        if name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{file}::{name}")
    assert missing == []
