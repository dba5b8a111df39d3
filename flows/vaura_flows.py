"""Prefect flows over the DVC pipeline: ``vaura-pipeline``, ``train-vaura`` and ``ablation``.

The flows are thin: every unit of work is a DVC command (``dvc repro``, ``dvc exp run --temp -S ...``) run as
a subprocess in its own process group, so DVC stays the single source of truth for what is up to date, and a
cancelled or timed-out task kills the whole tree (dvc → vaura → torchrun → ranks) instead of orphaning it.
All stages a flow run starts share one MLflow parent run (``VAURA_PIPELINE_ID``, read by
``vaura.tracking``); the flow links those runs as Prefect artifacts.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

# Where the DVC project lives: the deployment's working directory (prefect.yaml pull step) or this repo.
PROJECT_DIR = Path(os.environ.get("VAURA_PROJECT_DIR") or Path(__file__).resolve().parents[1])

_live_groups: set[int] = set()
_live_lock = threading.Lock()


class StageFailed(RuntimeError):
    """A DVC command exited non-zero or ran past its time limit (the message holds the tail of its log)."""


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _kill_all_live() -> None:
    with _live_lock:
        groups = list(_live_groups)
    for pgid in groups:
        kill_group(pgid, grace_s=5.0)


atexit.register(_kill_all_live)


def install_termination_handler() -> None:
    """Chain a SIGTERM handler that kills our subprocess groups before Prefect's own handler runs.

    Prefect cancels a flow run by SIGTERM-ing its process; children in their own sessions would survive that,
    so they are killed here first. Only possible from the main thread; elsewhere the atexit hook remains.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        _kill_all_live()
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _tail(text: str, n: int = 40) -> str:
    lines = [ln for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return "\n".join(lines[-n:])


def run_in_group(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float | None = None,
                 log: Callable[[str], None] = print) -> str:
    """Run ``argv`` in a new session; kill its whole process group on timeout, error or interruption.

    Output goes to a temp file (progress bars rewrite lines; a pipe could fill up), and its tail is logged and
    returned. Raises :class:`StageFailed` on a non-zero exit or on timeout.
    """
    with tempfile.TemporaryFile(mode="w+b") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        with _live_lock:
            _live_groups.add(proc.pid)
        try:
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                out.seek(0)
                raise StageFailed(f"`{' '.join(argv)}` ran past {timeout_s:.0f} s and was killed:\n"
                                  f"{_tail(out.read().decode(errors='replace'))}") from None
        finally:
            # Also reaps grandchildren left in the group after the leader exited (or on KeyboardInterrupt).
            kill_group(proc.pid, grace_s=5.0)
            proc.wait()
            with _live_lock:
                _live_groups.discard(proc.pid)
        out.seek(0)
        tail = _tail(out.read().decode(errors="replace"))
    log(f"$ {' '.join(argv)}  (exit {rc})\n{tail}")
    if rc != 0:
        raise StageFailed(f"`{' '.join(argv)}` failed with exit code {rc}:\n{tail}")
    return tail


def _tracking_uri(project: Path) -> str:
    """MLflow URI for subprocesses: the stack's server if set, else the params' local store made absolute.

    ``dvc exp run --temp`` runs stages in a temporary copy of the repo, where a relative sqlite path would
    point into that copy and the runs would be lost.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    uri = str((params.get("tracking") or {}).get("uri", "sqlite:///mlruns.db"))
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((project / uri[len(prefix):]).resolve())
    return uri


def _ensure_local_experiment(project: Path, uri: str) -> None:
    """Create the MLflow experiment with an absolute artifact folder before temp-dir experiments log to it."""
    if uri.startswith(("http://", "https://")):
        return
    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    tracking = params.get("tracking") or {}
    name = str(tracking.get("experiment", "vaura"))
    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        root = (project / str(tracking.get("artifact_root", "mlartifacts"))).resolve()
        client.create_experiment(name, artifact_location=root.as_uri())


def stage_env(project: Path, pipeline_id: str) -> dict[str, str]:
    """Environment for DVC subprocesses: shared MLflow parent, absolute tracking URI, this venv first on PATH."""
    env = dict(os.environ)
    env["VAURA_PIPELINE_ID"] = pipeline_id
    env["MLFLOW_TRACKING_URI"] = _tracking_uri(project)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def _dvc() -> list[str]:
    return [sys.executable, "-m", "dvc"]


def pipeline_stages(project: Path) -> list[str]:
    """Stage names of ``dvc.yaml`` in file order (the file lists them in dependency order)."""
    path = project / "dvc.yaml"
    if not path.exists():
        raise StageFailed(f"{path}: no dvc.yaml in the project folder")
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))


def _override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"a.b": 0.3}`` → ``["-S", "a.b=0.3"]``; DVC parses each value as YAML (JSON is valid YAML)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


@task(name="dvc-repro", task_run_name="repro {stage}", retries=0)
def repro_stage(stage: str, project: str, pipeline_id: str, force: bool = False,
                timeout_s: float | None = None) -> str:
    """``dvc repro --single-item <stage>``: upstream stages were run by earlier tasks of the flow."""
    argv = _dvc() + ["repro", "--single-item", stage] + (["--force"] if force else [])
    return run_in_group(argv, Path(project), stage_env(Path(project), pipeline_id), timeout_s,
                        get_run_logger().info)


@task(name="dvc-repro-target", task_run_name="repro {target}", retries=0)
def repro_target(target: str, project: str, pipeline_id: str, timeout_s: float | None = None) -> str:
    """``dvc repro <target>``: the target and whatever it needs that is not up to date (e.g. ``evaluate@prepend``
    runs ``filter@prepend``, ``train@prepend``, ``sweep@prepend`` and the shared stages once)."""
    argv = _dvc() + ["repro", target]
    return run_in_group(argv, Path(project), stage_env(Path(project), pipeline_id), timeout_s,
                        get_run_logger().info)


def _ablation(project: Path) -> dict[str, Any]:
    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    return params.get("ablation") or {}


def variant_names(project: Path) -> list[str]:
    """The ablation variants of the project's params.yaml (``ablation.variants``, the list dvc.yaml expands)."""
    return list(_ablation(project).get("variants") or {})


@task(name="dvc-exp-run", task_run_name="exp {name}")
def exp_run(name: str, overrides: dict[str, Any], target: str, project: str, pipeline_id: str,
            timeout_s: float | None = None) -> str:
    """``dvc exp run --temp -n <name> -S k=v ... <target>``: an isolated experiment, recorded by DVC and MLflow."""
    proj = Path(project)
    env = stage_env(proj, pipeline_id)
    _ensure_local_experiment(proj, env["MLFLOW_TRACKING_URI"])
    argv = _dvc() + ["exp", "run", "--temp", "--name", name, *_override_args(overrides), target]
    return run_in_group(argv, proj, env, timeout_s, get_run_logger().info)


def _flow_run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)[:8]
    except Exception:  # outside a flow run (unit tests call the helpers directly)
        return time.strftime("%Y%m%d%H%M%S")


def mlflow_runs(pipeline_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """The MLflow runs tagged with ``pipeline_id`` (parent first), as plain dicts with a UI link when served."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = client.search_experiments()
    if not exps:
        return []
    runs = client.search_runs([e.experiment_id for e in exps],
                              filter_string=f"tags.`vaura.pipeline_id` = '{pipeline_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    out = []
    for r in runs:
        link = (f"{tracking_uri.rstrip('/')}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
                if tracking_uri.startswith("http") else "")
        out.append({
            "run_id": r.info.run_id, "name": r.info.run_name or "", "role": r.data.tags.get("vaura.role", ""),
            "stage": r.data.tags.get("vaura.stage", ""), "exp": r.data.tags.get("dvc.exp_name", ""),
            "variant": r.data.tags.get("vaura.variant", ""),
            "status": r.info.status, "link": link, "metrics": dict(r.data.metrics), "params": dict(r.data.params),
        })
    out.sort(key=lambda d: d["role"] != "pipeline")
    return out


def publish_links(pipeline_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """Prefect artifacts pointing at this flow run's MLflow runs (a link per run when a server serves them)."""
    runs = mlflow_runs(pipeline_id, tracking_uri)
    key = re.sub(r"[^a-z0-9-]", "-", f"mlflow-{pipeline_id}".lower())
    for r in runs:
        if r["link"] and r["role"] == "pipeline":
            create_link_artifact(r["link"], link_text=f"MLflow parent run of {pipeline_id}", key=key)

    def cell(r: dict[str, Any]) -> str:
        return f"[{r['run_id']}]({r['link']})" if r["link"] else r["run_id"]

    rows = "\n".join(f"| {r['role']} | {r['stage']} | {r['exp']} | {r['status']} | {cell(r)} |" for r in runs)
    where = tracking_uri if tracking_uri.startswith("http") else f"`mlflow ui --backend-store-uri {tracking_uri}`"
    create_markdown_artifact(
        f"### MLflow runs of pipeline `{pipeline_id}`\nTracking: {where}\n\n"
        f"| role | stage | experiment | status | run |\n|---|---|---|---|---|\n{rows}\n",
        key=key + "-runs", description="MLflow runs logged by this flow run")
    return runs


@flow(name="vaura-pipeline", log_prints=True)
def vaura_pipeline(target: str = "", force: bool = False, stage_timeout_s: float = 3600.0,
                   acquire_retries: int = 2) -> list[str]:
    """Run the DVC pipeline stage by stage (each a task) up to ``target`` (default: every stage).

    DVC skips stages that are up to date. ``acquire`` is retried (network sources fail transiently); the other
    stages are deterministic, so a retry would only repeat the failure.
    """
    install_termination_handler()
    project = PROJECT_DIR
    stages = pipeline_stages(project)
    if target:
        if target not in stages:
            raise StageFailed(f"unknown stage '{target}'; dvc.yaml has {stages}")
        stages = stages[: stages.index(target) + 1]
    pid = f"vaura-pipeline-{_flow_run_id()}"
    for stage in stages:
        retries = acquire_retries if stage == "acquire" else 0
        repro_stage.with_options(retries=retries, retry_delay_seconds=10)(
            stage, str(project), pid, force, stage_timeout_s)
    publish_links(pid, _tracking_uri(project))
    return stages


@flow(name="train-vaura", log_prints=True)
def train_vaura(overrides: dict[str, Any] | None = None, target: str = "", name: str = "",
                timeout_s: float = 6 * 3600.0) -> str:
    """Train with parameter overrides as a DVC experiment (``dvc exp run --temp -S key=value ... <target>``).

    ``overrides`` maps dotted params keys to values, e.g. ``{"model.conditioning": "prepend"}``; ``target`` is
    the last stage to run (default ``train@<ablation.baseline>``: the baseline variant's training;
    ``evaluate@<variant>`` to score it too, ``report`` for every variant and the tables).
    """
    install_termination_handler()
    project = PROJECT_DIR
    target = target or f"train@{_ablation(project).get('baseline', 'baseline')}"
    run_id = _flow_run_id()
    exp_name = name or f"train-{run_id}"
    pid = f"train-vaura-{run_id}"
    exp_run(exp_name, dict(overrides or {}), target, str(project), pid, timeout_s)
    publish_links(pid, _tracking_uri(project))
    return exp_name


def ablation_table(runs: list[dict[str, Any]], variants: list[str], stage: str = "evaluate") -> list[dict[str, Any]]:
    """One row per variant: the metrics of its latest ``stage`` run (tag ``vaura.variant``; empty when none)."""
    rows = []
    for name in variants:
        done = [r for r in runs if r["stage"] == stage and r["variant"] == name]
        metrics = done[-1]["metrics"] if done else {}
        rows.append({"variant": name, **{k: round(float(v), 4) for k, v in sorted(metrics.items())}})
    return rows


@task(name="paper-tables", retries=0)
def paper_tables(project: str, pipeline_id: str, timeout_s: float | None = None) -> None:
    """``dvc repro report`` (it reads the variants' metrics files) and publish its tables."""
    proj = Path(project)
    run_in_group(_dvc() + ["repro", "report"], proj, stage_env(proj, pipeline_id), timeout_s, get_run_logger().info)
    params = yaml.safe_load((proj / "params.yaml").read_text()) or {}
    reports = proj / str((params.get("paths") or {}).get("reports", "reports"))
    for md in sorted(reports.glob("*.md")):
        create_markdown_artifact(md.read_text(), key=f"table-{re.sub(r'[^a-z0-9-]', '-', md.stem.lower())}",
                                 description=f"{md.name} from `vaura report`")


@flow(name="ablation", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def ablation(variants: list[str] | None = None, report: bool = True,
             timeout_s: float = 6 * 3600.0) -> list[dict[str, Any]]:
    """Run the ablation variants of params.yaml (``ablation.variants``: the list dvc.yaml expands, so the flow
    and ``dvc repro`` run the same variants) under one MLflow parent, then gather their metrics table.

    ``variants`` picks some of them by name (default: all). Each is ``dvc repro evaluate@<variant>``, one at a
    time (a CPU or single GPU is saturated by one); shared stages run once. With ``report``, ``dvc repro report``
    then builds the paper's tables and they are attached to the flow run. Ad-hoc variants: add an entry to
    ``ablation.variants`` (or ``dvc exp run -S +ablation.variants.<name>.<key>=<value>``).
    """
    install_termination_handler()
    project = PROJECT_DIR
    defined = variant_names(project)
    names = list(variants or defined)
    unknown = sorted(set(names) - set(defined))
    if unknown:
        raise StageFailed(f"unknown variant(s) {unknown}; params.yaml ablation.variants has {defined}")
    run_id = _flow_run_id()
    pid = f"ablation-{run_id}"
    futures = [repro_target.submit(f"evaluate@{name}", str(project), pid, timeout_s) for name in names]
    for fut in futures:
        fut.result()
    runs = publish_links(pid, _tracking_uri(project))
    table = ablation_table(runs, names)
    create_table_artifact(table, key=f"ablation-{run_id}", description=f"ablation {pid}: metrics per variant")
    if report:
        paper_tables(str(project), pid, timeout_s)
    return table
