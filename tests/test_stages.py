"""The stage skeleton (vaura.stages): the same flags everywhere, one root rule, one line per expected error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vaura.cli import COMMANDS, build_parser, main
from vaura.tables import write_table
from vaura.stages import one_line, run_guarded

REPO = Path(__file__).resolve().parents[1]
TOOLS = {"stack", "profile", "ui"}  # user tools, not pipeline stages: no params sections, no MLflow run
STAGES = sorted(set(COMMANDS) - TOOLS)
DEVICE_STAGES = {"score", "codec", "avclip", "cache", "train", "sweep", "evaluate", "generate"}
POSITIONAL = {"generate": ["clip.mp4", "-o", "out.mp4"]}


def _project(root: Path, edit=None) -> Path:
    """``root/params.yaml``: the repo's params with MLflow under ``root``, optionally edited."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"].update(uri=f"sqlite:///{root / 'mlruns.db'}", artifact_root=str(root / "art"),
                              system_metrics=False)
    if edit:
        edit(params)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_the_common_flags(name):
    """Pipeline stages: --params --root --no-track --debug (+ --device where a network runs); tools: --debug."""
    argv = [name, *POSITIONAL.get(name, []), "--debug"]
    if name == "stack":
        argv.insert(1, "status")
    elif name == "profile":
        argv[1:1] = ["micro", "--params", "p.yaml"]
    elif name == "ui":
        argv += ["--params", "p.yaml", "--port", "5001"]
    else:
        argv += ["--params", "p.yaml", "--root", "r", "--no-track"]
        if name in DEVICE_STAGES:
            argv += ["--device", "cpu"]
    args = build_parser(name).parse_args(argv)
    assert args.debug
    if name not in TOOLS:
        assert (args.params, args.root, args.no_track) == (Path("p.yaml"), Path("r"), True)
        assert getattr(args, "device", None) == ("cpu" if name in DEVICE_STAGES else None)


@pytest.mark.parametrize("name", STAGES)
def test_a_missing_key_is_one_line_naming_it_and_where_it_is_documented(name, tmp_path, stage_error):
    params = _project(tmp_path, lambda p: p["paths"].pop("reports"))
    assert main([name, *POSITIONAL.get(name, []), "--params", str(params), "--no-track"]) == 1
    assert stage_error(name) == "params.paths.reports: missing (every key must be set; configs/offline.yaml " \
                                "documents each one)"


def test_a_missing_train_key_does_not_fall_back_to_the_paper_value(tmp_path, stage_error):
    params = _project(tmp_path, lambda p: p["train"].pop("total_steps"))
    assert main(["train", "--params", str(params), "--no-track"]) == 1
    assert stage_error("train").startswith("params.train.total_steps: missing")


@pytest.mark.parametrize("name", STAGES)
def test_malformed_yaml_is_one_line_with_file_and_line(name, tmp_path, stage_error):
    params = tmp_path / "params.yaml"
    params.write_text("paths:\n  data: data\n  weights: [unclosed\nseed: 0\n")
    assert main([name, *POSITIONAL.get(name, []), "--params", str(params)]) == 1
    line = stage_error(name)
    assert line.startswith(f"{params}: not valid YAML (line ") and "column" in line


def test_present_but_unreadable_metric_weights_fail_evaluate_with_one_line(tmp_path, stage_error):
    """Absent metric weights make the metric "skipped"; a file that is there but unusable is an error."""
    params = _project(tmp_path)
    bad = tmp_path / yaml.safe_load(params.read_text())["evaluate"]["synchformer_weights"]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00 truncated download")
    assert main(["evaluate", "--params", str(params), "--no-track", "--device", "cpu"]) == 1
    assert stage_error("evaluate").startswith(f"{bad}: cannot read checkpoint")


def test_a_missing_params_file_is_one_line(tmp_path, stage_error):
    assert main(["score", "--params", str(tmp_path / "nope.yaml")]) == 1
    assert stage_error("score") == f"params file not found: {tmp_path / 'nope.yaml'}"


def _filter_project(root: Path) -> Path:
    data = root / "data"
    rows = [("t1", "train", 0.5, 10.0), ("v1", "val", 0.5, 10.0), ("e1", "test", 0.5, 10.0)]
    scores = pd.DataFrame(rows, columns=["clip", "split", "score", "duration_s"]).assign(scorer="motion-onset")
    write_table(data / "scores" / "scores.csv", scores.assign(path=[str(data / f"{c}.mp4") for c in scores["clip"]]))
    return _project(root)


def test_a_write_failure_is_one_line_naming_the_path(tmp_path, stage_error):
    params = _filter_project(tmp_path)
    (tmp_path / "data" / "splits").write_text("a file where the stage wants its folder")
    assert main(["filter", "--params", str(params), "--no-track"]) == 1
    assert stage_error("filter").startswith(f"{tmp_path / 'data' / 'splits'}")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_adds_the_traceback(tmp_path, capsys, monkeypatch, how):
    params = _project(tmp_path, lambda p: p["paths"].pop("reports"))
    argv = ["filter", "--params", str(params), "--no-track"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("VAURA_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("vaura filter: params.paths.reports: missing")


def test_the_root_is_the_params_files_folder_not_the_working_directory(tmp_path, monkeypatch):
    """Data and a relative MLflow store both land beside the params file, wherever the command runs from."""
    params = _filter_project(tmp_path / "project")
    p = yaml.safe_load(params.read_text())
    p["tracking"].update(uri="sqlite:///mlruns.db", artifact_root="mlartifacts")
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["filter", "--params", str(params)]) == 0
    assert (tmp_path / "project" / "data" / "splits" / "train.csv").is_file()
    assert (tmp_path / "project" / "mlruns.db").is_file()
    assert list(elsewhere.iterdir()) == []


def test_root_overrides_the_params_folder(tmp_path):
    params = _project(tmp_path / "params_only")
    _filter_project(tmp_path / "other")
    assert main(["filter", "--params", str(params), "--root", str(tmp_path / "other"), "--no-track"]) == 0
    assert (tmp_path / "other" / "data" / "splits" / "train.csv").is_file()


def test_no_track_logs_no_run(tmp_path):
    params = _filter_project(tmp_path)
    assert main(["filter", "--params", str(params), "--no-track"]) == 0
    assert not (tmp_path / "mlruns.db").exists()
    assert main(["filter", "--params", str(params)]) == 0
    assert (tmp_path / "mlruns.db").exists()


def _raise(exc: BaseException):
    def body():
        raise exc

    return body


def test_a_bug_keeps_its_traceback():
    """Only expected failures become one line; anything else (a KeyError, numpy's own ValueError) is a bug."""
    import numpy as np

    with pytest.raises(KeyError):
        run_guarded("x", _raise(KeyError("k")))
    with pytest.raises(ValueError):
        run_guarded("x", lambda: np.zeros(2).reshape(3))


def test_vaura_checks_and_os_errors_are_expected(capsys):
    from vaura.model.config import named_size

    assert run_guarded("x", lambda: named_size("huge")) == 1  # a plain ValueError raised by vaura's own check
    assert capsys.readouterr().err.startswith("vaura x: unknown model size 'huge'")
    assert one_line(FileNotFoundError(2, "No such file or directory", "data/x.csv")) == \
        "data/x.csv: No such file or directory"
    assert one_line(RuntimeError("multi\n  line")) is None


def test_the_error_line_hides_credentials(capsys):
    from vaura.config import ConfigError

    url = "https://user:pw@host/v.mp4?X-Amz-Signature=abc123"
    assert run_guarded("x", _raise(ConfigError(f"{url}: not found"))) == 1
    err = capsys.readouterr().err
    assert "pw@" not in err and "abc123" not in err and "https://host/v.mp4" in err


def test_train_device_flag_goes_through_the_one_resolver(tmp_path, stage_error):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: asking for it is not an error here")
    params = _project(tmp_path, lambda p: p["train"].update(nproc=1, device="cpu"))
    assert main(["train", "--params", str(params), "--no-track", "--device", "cuda"]) == 1
    assert stage_error("train") == ("device 'cuda' asked for, but torch sees no CUDA device here (use auto or cpu)")


def _failed_train_line(tmp_path: Path, nproc: int) -> str:
    """Run `vaura train` (from another folder) on a project without a cache; return its one error line (fails
    unless exactly one)."""
    params = _project(tmp_path / "project", lambda p: p["train"].update(nproc=nproc, device="cpu"))
    (tmp_path / "elsewhere").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "vaura.cli", "train", "--params", str(params), "--no-track"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path / "elsewhere")
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vaura train: ")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    return lines[0]


def test_train_error_in_process_is_one_line(tmp_path):
    """nproc 1: no cache to train on -> one line, no traceback, naming the cache under the params folder."""
    assert str(tmp_path / "project" / "data" / "cache") in _failed_train_line(tmp_path, 1)


@pytest.mark.slow
def test_train_error_under_torchrun_is_one_line_not_one_per_rank(tmp_path):
    """nproc 2: both workers fail the same way; the launcher prints the line once, torchrun's report not at all."""
    assert str(tmp_path / "project" / "data" / "cache") in _failed_train_line(tmp_path, 2)
