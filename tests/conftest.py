from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def stage_error(capsys):
    """``stage_error("codec")``: the one line a failed stage printed, without its ``vaura codec: `` prefix.

    Fails unless stderr holds exactly one such line and no traceback (the one-line error contract).
    """

    def read(stage: str) -> str:
        err = capsys.readouterr().err
        prefix = f"vaura {stage}: "
        lines = [line for line in err.splitlines() if line.startswith(prefix)]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0][len(prefix):]

    return read
