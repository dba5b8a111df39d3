"""Every params.yaml key must be read by code, by a reader of ITS section: a key that does nothing is a bug
(docs/CONTRIBUTING.md).

A section's readers are the files of ``vaura/`` and ``flows/`` that name its dataclass (or a nested one) or
quote the section's name; the registry that lists every section is not a reader. A key counts as read when a
reader accesses it (``cfg.key``) or quotes it (``"key"``: getattr, asdict or raw-dict lookups). So
``evaluate.window_s`` is not "read" because some other section's ``.window_s`` is.
"""
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest

import vaura.profiles
from vaura.profiles import SECTIONS

REGISTRY = Path(inspect.getsourcefile(vaura.profiles)).resolve()


def _classes(cls: type) -> list[type]:
    """``cls`` and every dataclass nested in it."""
    hints = typing.get_type_hints(cls)
    out = [cls]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _classes(hints[f.name])
    return out


def _keys(cls: type, prefix: str) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append((f"{prefix}.{f.name}", f.name))
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"{prefix}.{f.name}")
    return out


def _sources(repo_root: Path) -> dict[Path, str]:
    files = [*repo_root.joinpath("vaura").rglob("*.py"), *repo_root.joinpath("flows").rglob("*.py")]
    return {p.resolve(): p.read_text() for p in files}


def readers(section: str, cls: type, sources: dict[Path, str]) -> dict[Path, str]:
    names = [c.__name__ for c in _classes(cls)]
    pattern = re.compile(rf"\b({'|'.join(names)})\b|[\"']{section}[\"']")
    return {p: src for p, src in sources.items() if p != REGISTRY and pattern.search(src)}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_key_is_read_by_a_reader_of_its_section(section, repo_root):
    cls = SECTIONS[section]
    text = "\n".join(readers(section, cls, _sources(repo_root)).values())
    unused = [dotted for dotted, name in _keys(cls, section) if not re.search(rf"\.{name}\b|[\"']{name}[\"']", text)]
    assert not unused, f"params keys never read by a reader of section {section!r}: {unused}"


def test_a_key_read_only_by_another_section_counts_as_unused(tmp_path):
    """The check is per section: a key name that only another section's reader uses is reported."""

    @dataclasses.dataclass
    class Lonely:
        window_s: float = 1.0

    (tmp_path / "vaura").mkdir()
    (tmp_path / "vaura" / "owner.py").write_text("class Lonely: ...\n")
    (tmp_path / "vaura" / "other.py").write_text("def f(cfg):\n    return cfg.window_s\n")
    text = "\n".join(readers("lonely", Lonely, _sources(tmp_path)).values())
    assert not re.search(r"\.window_s\b", text)
    assert re.search(r"\.window_s\b", "\n".join(_sources(tmp_path).values()))  # the old global check passed
