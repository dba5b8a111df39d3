"""Every params.yaml key must be read by code: a key that does nothing is a bug (docs/CONTRIBUTING.md)."""
import dataclasses
import re
import typing

import pytest

from vaura.profiles import SECTIONS


def _fields(cls, prefix):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        yield f"{prefix}.{f.name}", f.name
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}.{f.name}")


def _sources(repo_root):
    files = [*repo_root.joinpath("vaura").rglob("*.py"), *repo_root.joinpath("flows").rglob("*.py")]
    return "\n".join(p.read_text() for p in files)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_field_is_read_somewhere(section, repo_root):
    src = _sources(repo_root)
    unused = [
        dotted
        for dotted, name in _fields(SECTIONS[section], section)
        # attribute access (cfg.name) or a string key (getattr / asdict lookups) outside its declaration
        if not re.search(rf"\.{name}\b|[\"']{name}[\"']", src)
    ]
    assert not unused, f"params keys never read by code: {unused}"
