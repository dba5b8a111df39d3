"""A simulated cluster on one machine: the fanned-out ablation over two process workers that share nothing but the
stack's servers (MLflow, S3, Prefect) and a bare git repository, as two machines would."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from pipeline_helpers import BIN, DVC, clean_env, make_micro_repo, run

from vaura.stack import MEMBER_ENV, StackSettings, client_env, down, free_port, up

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flows():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vaura_flows", REPO / "flows" / "vaura_flows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_units_pull_exactly_the_shared_outputs_their_stages_read(flows) -> None:
    """On this repo's dvc.yaml: the parent's shared stages, each variant unit's pulls, the report's pulls."""
    graph = flows.stage_paths(REPO)
    stages = flows.stages_upto(flows.pipeline_stages(REPO), "report")
    variants = list(yaml.safe_load((REPO / "params.yaml").read_text())["ablation"]["variants"])
    per_variant = {v: flows.variant_stages(stages, v) for v in variants}
    assert per_variant["prepend"] == ["filter@prepend", "train@prepend", "sweep@prepend", "evaluate@prepend"]
    everything = [x for v in variants for x in per_variant[v]]
    shared = [s for s in stages if s in flows.upstream(graph, everything) and "@" not in s]
    assert shared == ["acquire", "preprocess", "score", "codec", "avclip", "cache"]
    others = [s for s in graph if s not in per_variant["prepend"]]
    assert flows.needed_outs(graph, per_variant["prepend"], others) == [
        "data/cache", "data/clips", "data/codec", "data/raw", "data/scores"]  # never another variant's outputs
    assert flows.needed_outs(graph, ["report"], everything) == [f"data/eval/{v}/{f}" for v in sorted(variants)
                                                                for f in ("metrics.json", "onsets.csv", "timing.json")]


def test_the_parent_names_each_variant_that_did_not_complete(flows) -> None:
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Failed, Running

    runs = {v: FlowRun(flow_id=uuid4(), name=f"abl-{v}", state=state) for v, state in (
        ("baseline", Completed()), ("prepend", Failed(message="evaluate@prepend failed")), ("slow", Running()))}
    runs["lost"] = RuntimeError("deployment 'ablation-variant/fanout' not found")
    lines = flows.unfinished(runs)
    assert lines == [f"variant prepend: flow run abl-prepend ({runs['prepend'].id}) Failed: evaluate@prepend failed",
                     f"variant slow: flow run abl-slow ({runs['slow'].id}) Running",
                     "variant lost: not submitted: deployment 'ablation-variant/fanout' not found"]


def test_fan_out_refuses_what_the_workers_could_not_reproduce(flows, tmp_path: Path, monkeypatch) -> None:
    env = clean_env()
    run(["git", "init", "-q", str(tmp_path)], tmp_path, env)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    for argv in (["git", "add", "params.yaml"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"],
                 ["git", "remote", "add", "origin", "/srv/vaura.git"]):
        run(argv, tmp_path, env)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(flows.StageFailed, match="not a server every worker reaches"):
        flows.fan_out_source(tmp_path, "", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    head = run(["git", "rev-parse", "HEAD"], tmp_path, env).strip()
    assert flows.fan_out_source(tmp_path, "", "") == ("http://127.0.0.1:5999", "/srv/vaura.git", head)
    (tmp_path / "params.yaml").write_text("seed: 2\n")
    with pytest.raises(flows.StageFailed, match="uncommitted changes .M params.yaml"):
        flows.fan_out_source(tmp_path, "", "")
    assert flows.fan_out_source(tmp_path, "", head)[2] == head  # an explicit commit runs as given


def test_variant_lock_entries_come_from_their_refs_and_nothing_else(flows, tmp_path: Path) -> None:
    env = clean_env()
    remote, clone = tmp_path / "remote.git", tmp_path / "clone"
    run(["git", "init", "-q", "--bare", str(remote)], tmp_path, env)
    run(["git", "clone", "-q", str(remote), str(clone)], tmp_path, env)
    lock = {"schema": "2.0", "stages": {"cache": {"cmd": "vaura cache"}}}
    (clone / "dvc.lock").write_text(yaml.safe_dump(lock))
    flows.commit_and_push(clone, ["dvc.lock"], "shared", "refs/heads/main")
    theirs = {"schema": "2.0", "stages": {"cache": {"cmd": "changed elsewhere"}, "train@a": {"cmd": "train a"},
                                          "train@b": {"cmd": "stale b"}}}
    (clone / "dvc.lock").write_text(yaml.safe_dump(theirs))
    flows.commit_and_push(clone, ["dvc.lock"], "variant a", "refs/vaura/p/a")
    run(["git", "reset", "-q", "--hard", "HEAD~1"], clone, env)
    flows.merge_variant_locks(clone, {"a": "refs/vaura/p/a"}, {"a": ["train@a"]})
    merged = yaml.safe_load((clone / "dvc.lock").read_text())
    assert merged["stages"] == {"cache": {"cmd": "vaura cache"}, "train@a": {"cmd": "train a"}}
    with pytest.raises(flows.StageFailed, match="refs/vaura/p/a: dvc.lock has no entry for sweep@a"):
        flows.merge_variant_locks(clone, {"a": "refs/vaura/p/a"}, {"a": ["sweep@a"]})


def _worker(name: str, folder: Path, remote: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process worker of the pool's `variants` queue, started in its own clone with its own scratch folders."""
    run(["git", "clone", "-q", str(remote), str(folder / "vaura")], folder.parent, env)
    (folder / "tmp").mkdir()
    wenv = {**env, "VAURA_WORK_DIR": str(folder / "work"), "TMPDIR": str(folder / "tmp"),
            "PREFECT_HOME": str(folder / "prefect"), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    log = open(folder / "worker.log", "wb")
    return subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", env["VAURA_WORK_POOL"], "--type",
                             "process", "--work-queue", "variants", "--limit", "1", "--name", name,
                             "--install-policy", "never"],
                            cwd=folder / "vaura", env=wenv, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _flow_runs(api: str, flow_name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


@contextlib.contextmanager
def cluster(tmp_path: Path, project: Path, workers: tuple[str, ...], monkeypatch) -> Iterator[dict]:
    """``project`` pushed to a bare git remote (its ``origin``), the stack up on it, and process workers of the
    `variants` queue, each in its own clone and folders; yields what the test needs; stops everything."""
    remote = tmp_path / "remote.git"
    env = clean_env()
    run(["git", "init", "-q", "--bare", str(remote)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(remote)], project, env)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project, env)
    run(["git", "symbolic-ref", "HEAD", "refs/heads/main"], remote, env)
    state = tmp_path / "stack"
    settings = StackSettings(state_dir=state, project_dir=project, s3_port=free_port(), mlflow_port=free_port(),
                             prefect_port=free_port(), bucket="vaura-fanout")
    monkeypatch.setenv("VAURA_WORK_DIR", str(tmp_path / "control" / "work"))  # the stack worker's (the parent's)
    cenv = clean_env(client_env(settings))
    procs: list[subprocess.Popen] = []
    try:
        up(settings, log=lambda m: None)
        run(["git", "commit", "-qam", "the stack's DVC remote"], project, env)  # `up` named it in .dvc/config
        run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project, env)
        for name in workers:
            (tmp_path / name).mkdir()
            procs.append(_worker(name, tmp_path / name, remote, {**cenv, MEMBER_ENV: str(state)}))
        yield {"remote": remote, "settings": settings, "env": cenv,
               "commit": run(["git", "rev-parse", "HEAD"], project, env).strip()}
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        down(settings, log=lambda m: None)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 4-9 min measured on a shared 2-core box; `make test` runs it beside another
def test_two_workers_run_the_variants_at_once_and_a_third_clone_pulls_the_ablation(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    user = make_micro_repo(tmp_path / "user")  # the "user's" checkout
    params = yaml.safe_load((user / "params.yaml").read_text())
    params["codec"]["train"]["steps"] = 2  # the shared stages run once; keep them short on CI's 2 cores
    (user / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = clean_env()
    run(["git", "commit", "-qam", "fan-out test"], user, env)
    with cluster(tmp_path, user, ("w1", "w2"), monkeypatch) as c:
        remote, settings, cenv, commit = c["remote"], c["settings"], c["env"], c["commit"]
        out = run([str(BIN / "prefect"), "deployment", "run", "ablation/local", "--param", "fan_out=true",
                   "--watch", "--watch-timeout", "1300"], user, cenv, 1320)
        assert "Completed" in out, out

        # Each worker ran one variant; their flow runs' time windows overlap.
        variants = sorted(_flow_runs(settings.prefect_url, "ablation-variant"), key=lambda r: r.name)
        assert len(variants) == 2 and all(r.state.is_completed() for r in variants), variants
        (a, b) = variants
        assert a.start_time < b.end_time and b.start_time < a.end_time, [(r.start_time, r.end_time) for r in variants]
        ran = {name: [r.name for r in variants if str(r.id) in (tmp_path / name / "worker.log").read_text()]
               for name in ("w1", "w2")}
        assert sorted(len(v) for v in ran.values()) == [1, 1], ran
        (parent,) = _flow_runs(settings.prefect_url, "ablation")
        pid = f"ablation-{str(parent.id)[:8]}"
        assert {r.name for r in variants} == {f"{pid}-baseline", f"{pid}-prepend"}

        # Every stage of both variants logged to the shared MLflow server under the ablation's parent run.
        mlc = MlflowClient(settings.mlflow_url)
        exp = mlc.get_experiment_by_name("vaura")
        runs = mlc.search_runs([exp.experiment_id], f"tags.`vaura.pipeline_id` = '{pid}'")
        trained = sorted(r.data.tags.get("vaura.variant", "") for r in runs
                         if r.data.tags.get("vaura.stage") == "train")
        assert trained == ["baseline", "prepend"], [r.data.tags for r in runs]
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs if r.data.tags.get("vaura.role") == "stage"}
        assert len(parents) == 1

        # A third clone: the ablation's branch names every output, the DVC remote has them all.
        third = tmp_path / "third"
        run(["git", "clone", "-q", "--branch", pid, str(remote), str(third)], tmp_path, env)
        assert run(["git", "log", "-1", "--format=%P"], third, env).strip() != ""
        assert commit in run(["git", "log", "--format=%H"], third, env)
        run(DVC + ["remote", "add", "--local", "-d", "fanout", "s3://vaura-fanout/dvc"], third, cenv)
        run(DVC + ["pull"], third, cenv, 300)
        assert "up to date" in run(DVC + ["status"], third, cenv)
        for v in ("baseline", "prepend"):
            assert json.loads((third / "data" / "eval" / v / "metrics.json").read_text())
            assert (third / "data" / "train" / v / "best.pt").is_file()
        table = (third / "reports" / "variants.md").read_text()
        assert "baseline" in table and "prepend" in table
        assert not (user / "data").exists()  # the user's checkout was only read: every unit had its own clone


PROBE = '''\
import json, os, sys, mlflow, yaml
from vaura.tracking import stage_run
stage, p = sys.argv[1], yaml.safe_load(open("params.yaml"))
os.makedirs("out", exist_ok=True)
if stage == "prep":
    open("out/prep.txt", "w").write("shared")
elif stage == "report":
    rows = [f"| {v} | {json.load(open(f'out/eval-{v}.json'))['score']} |" for v in p["ablation"]["variants"]]
    os.makedirs("reports", exist_ok=True)
    open("reports/table.md", "w").write("\\n".join(rows) + "\\n")
else:
    variant = sys.argv[2]
    value = p["ablation"]["variants"][variant]["probe"]["value"]
    if value < 0:
        sys.exit(f"probe {stage}: variant {variant}: negative value")
    with stage_run(stage, {"probe": {"value": value}}, params_file="params.yaml"):
        mlflow.log_metric("score", value)
    path = f"out/eval-{variant}.json" if stage == "evaluate" else f"out/train-{variant}.txt"
    open(path, "w").write(json.dumps({"score": value}))
'''

PROBE_DVC = """\
stages:
  prep:
    cmd: python probe.py prep
    deps: [probe.py]
    outs: [out/prep.txt]
  train:
    foreach: ${ablation.variants}
    do:
      cmd: python probe.py train ${key}
      deps:
        - probe.py
        - out/prep.txt
      params:
        - ablation.variants.${key}
      outs:
        - out/train-${key}.txt
  evaluate:
    foreach: ${ablation.variants}
    do:
      cmd: python probe.py evaluate ${key}
      deps:
        - probe.py
        - out/train-${key}.txt
      params:
        - ablation.variants.${key}
      metrics:
        - out/eval-${key}.json
  report:
    cmd: python probe.py report
    deps: [out/eval-good.json, out/eval-bad.json]
    params: [ablation]
    outs:
      - reports:
          cache: false
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_failing_variant_fails_the_ablation_by_name_and_leaves_the_other_intact(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """`bad` fails on its worker (and again on Prefect's retry): the ablation fails naming it, after `good`
    finished, whose outputs and lock entries are in the remotes; nothing of `bad` reaches the ablation's branch."""
    import shutil

    proj = tmp_path / "probe"
    proj.mkdir()
    shutil.copytree(REPO / "flows", proj / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", proj / "prefect.yaml")
    (proj / "probe.py").write_text(PROBE)
    (proj / "dvc.yaml").write_text(PROBE_DVC)
    (proj / "params.yaml").write_text(yaml.safe_dump({
        "probe": {"value": 1}, "ablation": {"variants": {"good": {"probe": {"value": 3}},
                                                         "bad": {"probe": {"value": -1}}}},
        "tracking": {"uri": "sqlite:///mlruns.db", "artifact_root": "mlartifacts", "experiment": "vaura",
                     "system_metrics": False, "system_metrics_interval_s": 10.0}}, sort_keys=False))
    (proj / ".gitignore").write_text("/mlruns.db\n/mlartifacts/\n")
    env = clean_env()
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "ci@vaura"],
                 ["git", "config", "user.name", "ci"], DVC + ["init", "-q"],
                 DVC + ["config", "core.analytics", "false"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "probe ablation"]):
        run(argv, proj, env)
    with cluster(tmp_path, proj, ("w1", "w2"), monkeypatch) as c:
        res = subprocess.run([str(BIN / "prefect"), "deployment", "run", "ablation/local", "--param", "fan_out=true",
                              "--watch", "--watch-timeout", "600"], cwd=proj, env=c["env"], capture_output=True,
                             text=True, timeout=620)
        assert res.returncode != 0 and "Failed" in res.stdout, res.stdout[-3000:]
        (parent,) = _flow_runs(c["settings"].prefect_url, "ablation")
        pid = f"ablation-{str(parent.id)[:8]}"
        units = {r.name: r for r in _flow_runs(c["settings"].prefect_url, "ablation-variant")}
        bad, good = units[f"{pid}-bad"], units[f"{pid}-good"]
        assert good.state.is_completed() and bad.state.is_failed() and bad.run_count == 2  # Prefect retried it once
        assert "1 of 2 variant(s) did not complete" in parent.state.message
        assert f"variant bad: flow run {pid}-bad ({bad.id}) Failed" in parent.state.message
        assert "variant good" not in parent.state.message
        assert parent.end_time >= good.end_time  # it waited for the good one before failing

        # `good`'s results are whole: its lock entries on its ref, its outputs in the DVC remote.
        clone = tmp_path / "check"
        run(["git", "clone", "-q", "--branch", pid, str(c["remote"]), str(clone)], tmp_path, env)
        ablation_lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
        assert sorted(ablation_lock) == ["prep"]  # the branch holds the shared stage only: no `bad`, no report
        run(["git", "fetch", "-q", "origin", f"refs/vaura/{pid}/good"], clone, env)
        run(["git", "checkout", "-q", "FETCH_HEAD"], clone, env)
        assert {"train@good", "evaluate@good"} <= set(yaml.safe_load((clone / "dvc.lock").read_text())["stages"])
        run(DVC + ["remote", "add", "--local", "-d", "fanout", "s3://vaura-fanout/dvc"], clone, c["env"])
        run(DVC + ["pull", "evaluate@good"], clone, c["env"], 300)
        assert json.loads((clone / "out" / "eval-good.json").read_text()) == {"score": 3}
        refs = run(["git", "ls-remote", str(c["remote"]), f"refs/vaura/{pid}/*"], clone, env)
        assert f"refs/vaura/{pid}/good" in refs and f"refs/vaura/{pid}/bad" not in refs
