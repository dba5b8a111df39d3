"""Prefect flows over the DVC pipeline: ``vaura-pipeline``, ``train-vaura``, ``ablation`` (+ ``ablation-variant``).

The flows are thin: every unit of work is a DVC command (``dvc repro``, ``dvc exp run --temp -S ...``) run as
a subprocess in its own process group, so DVC stays the single source of truth for what is up to date, and a
cancelled or timed-out task kills the whole tree (dvc → vaura → torchrun → ranks) instead of orphaning it.
``vaura-pipeline`` and ``ablation`` run in this checkout, like ``dvc repro``: their results are in
``dvc.lock``, so ``dvc push`` right after them pushes what they produced. ``train-vaura`` runs an isolated
experiment (``dvc exp push <git remote> <name>`` shares it, ``dvc exp apply <name>`` takes it into the checkout).
``ablation`` with ``fan_out`` instead submits each variant as an ``ablation-variant`` flow run to the work pool,
each in its own clone at one git commit, exchanging data through the DVC remote only (see ``fan_out_ablation``).
All stages a flow run starts share one MLflow parent run (``VAURA_PIPELINE_ID``, read by
``vaura.tracking``); the flow links those runs as Prefect artifacts.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import get_run_context

# Where the DVC project lives: the deployment's working directory (prefect.yaml pull step) or this repo.
PROJECT_DIR = Path(os.environ.get("VAURA_PROJECT_DIR") or Path(__file__).resolve().parents[1])

_live_groups: set[int] = set()
_live_lock = threading.Lock()
# Set once the flow run is being stopped (SIGTERM from Prefect's cancellation, a flow timeout, an error in the
# flow body): no unit starts after it, so a cancelled fan-out cannot start its next queued experiment.
_stopping = threading.Event()
# A progress bar rewrites one line with '\r'; its frames are logged at most this often (seconds).
PROGRESS_EVERY_S = 30.0


class StageFailed(RuntimeError):
    """A DVC command exited non-zero or ran past its time limit (the message holds the tail of its log)."""


class FlowStopped(RuntimeError):
    """A unit was not started, or was killed, because the flow run is being cancelled or stopped."""


def kill_groups(pgids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM the process groups together, then SIGKILL whatever is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        alive = []
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
                alive.append(pgid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [g for g in alive if _group_alive(g)]
        if not alive:
            return
        pgids = alive


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_all() -> None:
    """Stop the flow run's work: start no further unit and kill the running ones' process groups."""
    _stopping.set()
    with _live_lock:
        groups = list(_live_groups)
    kill_groups(groups, grace_s=5.0)


atexit.register(stop_all)


def install_termination_handler() -> None:
    """Arm this flow run's stop switch and chain a SIGTERM handler that throws it before Prefect's own runs.

    Prefect cancels a flow run by SIGTERM-ing its process; children in their own sessions would survive that,
    and a thread pool would start its next queued unit, so both are stopped here first. Only possible from the
    main thread; elsewhere the atexit hook remains.
    """
    _stopping.clear()
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        stop_all()
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def stop_on_exit() -> Iterator[None]:
    """Whatever ends the flow body early (cancellation, timeout, a failed unit) stops its remaining units."""
    try:
        yield
    except BaseException:
        stop_all()
        raise


def _pump(stream: Any, log: Callable[[str], None], tail: deque[str], every_s: float) -> None:
    """Log a subprocess's output line by line as it arrives; '\r' progress frames at most every ``every_s``."""
    buf = b""
    last_frame = -float("inf")
    while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
        buf += chunk
        parts = re.split(rb"(\r\n|\n|\r)", buf)
        buf = parts.pop()  # the unfinished segment
        for text, end in zip(parts[::2], parts[1::2]):
            line = text.decode(errors="replace").rstrip()
            if not line.strip():
                continue
            if end == b"\r":  # a progress frame: the next one overwrites it
                if time.monotonic() - last_frame < every_s:
                    continue
                last_frame = time.monotonic()
            tail.append(line)
            log(line)
    if buf.strip():
        line = buf.decode(errors="replace").rstrip()
        tail.append(line)
        log(line)


def run_in_group(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float | None = None,
                 log: Callable[[str], None] = print) -> str:
    """Run ``argv`` in a new session; kill its whole process group on timeout, error, interruption or stop.

    Each output line is logged as it arrives (progress-bar frames at most every ``PROGRESS_EVERY_S``); the
    tail is returned. Raises :class:`StageFailed` on a non-zero exit or on timeout, :class:`FlowStopped` when
    the flow run is being stopped (then the command is not started at all, or killed).
    """
    cmd = " ".join(argv)
    tail: deque[str] = deque(maxlen=40)
    with _live_lock:  # checked and registered under one lock: a stop either prevents the start or kills it
        if _stopping.is_set():
            raise FlowStopped(f"`{cmd}` not started: the flow run is being stopped")
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        _live_groups.add(proc.pid)
    log(f"$ {cmd}")
    reader = threading.Thread(target=_pump, args=(proc.stdout, log, tail, PROGRESS_EVERY_S), daemon=True)
    reader.start()
    try:
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_groups([proc.pid])
            reader.join(timeout=5.0)
            raise StageFailed(f"`{cmd}` ran past {timeout_s:.0f} s and was killed:\n" + "\n".join(tail)) from None
    finally:
        # Also reaps grandchildren left in the group after the leader exited (or on KeyboardInterrupt).
        kill_groups([proc.pid], grace_s=5.0)
        proc.wait()
        reader.join(timeout=5.0)
        proc.stdout.close()
        with _live_lock:
            _live_groups.discard(proc.pid)
    if _stopping.is_set():
        raise FlowStopped(f"`{cmd}` was stopped (exit {rc}): the flow run is being stopped")
    log(f"$ {cmd}  (exit {rc})")
    if rc != 0:
        raise StageFailed(f"`{cmd}` failed with exit code {rc}:\n" + "\n".join(tail))
    return "\n".join(tail)


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


def mlflow_parent(project: Path, pipeline_id: str) -> contextlib.AbstractContextManager[str]:
    """The flow run owns its MLflow parent run: FINISHED, FAILED, or KILLED when cancelled (see vaura.tracking).

    With a local store the experiment is created with an absolute artifact folder first, so stages running
    in a ``dvc exp run --temp`` copy log their artifacts into this project, not into the copy.
    """
    from vaura.tracking import pipeline_parent

    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    tracking = dict(params.get("tracking") or {})
    tracking["artifact_root"] = str((project / str(tracking.get("artifact_root", "mlartifacts"))).resolve())
    return pipeline_parent(pipeline_id, {"tracking": tracking}, uri=_tracking_uri(project))


def stage_env(project: Path, pipeline_id: str, tracking_uri: str = "") -> dict[str, str]:
    """Environment for DVC subprocesses: shared MLflow parent, absolute tracking URI, this venv first on PATH,
    and the project first on PYTHONPATH, so a stage runs the ``vaura/`` that DVC hashed as its code dependency
    (a fan-out unit's clone at the ablation's commit, not whatever the worker's environment installed)."""
    env = dict(os.environ)
    env["VAURA_PIPELINE_ID"] = pipeline_id
    env["MLFLOW_TRACKING_URI"] = tracking_uri or _tracking_uri(project)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project.resolve()), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Stage output reaches the flow's log line by line: unbuffered Python, progress bars as periodic frames.
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_MININTERVAL"] = str(PROGRESS_EVERY_S)
    return env


def _dvc() -> list[str]:
    return [sys.executable, "-m", "dvc"]


def pipeline_stages(project: Path) -> list[str]:
    """Stage names as DVC expands them (a ``foreach`` stage per variant: ``train@baseline``), in dvc.yaml order,
    which lists them in dependency order."""
    if not (project / "dvc.yaml").exists():
        raise StageFailed(f"{project / 'dvc.yaml'}: no dvc.yaml in the project folder")
    out = subprocess.run(_dvc() + ["stage", "list", "--name-only"], cwd=project, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise StageFailed(f"{project / 'dvc.yaml'}: `dvc stage list` failed: {out.stderr.strip()[-2000:]}")
    return out.stdout.split()


def stages_upto(stages: list[str], target: str) -> list[str]:
    """The stages up to ``target`` (a stage, or a foreach group such as ``train``: all its variants)."""
    hits = [i for i, name in enumerate(stages) if name == target or name.startswith(target + "@")]
    if not hits:
        raise StageFailed(f"unknown stage '{target}'; dvc.yaml has {stages}")
    return stages[: hits[-1] + 1]


def _override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"a.b": 0.3}`` → ``["-S", "a.b=0.3"]``; DVC parses each value as YAML (JSON is valid YAML)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


@task(name="dvc-repro", task_run_name="repro {stage}", retries=0)
def repro_stage(stage: str, project: str, pipeline_id: str, force: bool = False,
                timeout_s: float | None = None, tracking_uri: str = "") -> str:
    """``dvc repro --single-item <stage>``: upstream stages were run by earlier tasks of the flow."""
    argv = _dvc() + ["repro", "--single-item", stage] + (["--force"] if force else [])
    return run_in_group(argv, Path(project), stage_env(Path(project), pipeline_id, tracking_uri), timeout_s,
                        get_run_logger().info)


def run_experiment(name: str, overrides: dict[str, Any], target: str, project: Path, pipeline_id: str,
                   timeout_s: float | None = None, log: Callable[[str], None] = print) -> str:
    """Run one experiment; if it is killed (cancel, timeout), close DVC's record of it as DVC would."""
    argv = _dvc() + ["exp", "run", "--temp", "--name", name, *_override_args(overrides), target]
    try:
        return run_in_group(argv, project, stage_env(project, pipeline_id), timeout_s, log)
    except BaseException:
        close_killed_experiment(project, name)
        raise


def close_killed_experiment(project: Path, name: str) -> bool:
    """Mark experiment ``name`` failed and remove its temporary copy of the repo, if it was killed mid-run.

    ``dvc exp run --temp`` closes its executor record (``.dvc/tmp/exps/run/<rev>/<rev>.run``) and deletes its
    temp folder only when it ends by itself; killed, it would stay "Running" in ``dvc exp show`` forever, with
    its copy of the data. This does what DVC's own executor clean-up does for a run that failed.
    """

    from dvc.repo.experiments.executor.base import ExecutorInfo, TaskStatus

    closed = False
    for info_file in (project / ".dvc" / "tmp" / "exps" / "run").glob("*/*.run"):
        info = ExecutorInfo.load_json(str(info_file))
        if info.name == name and info.status <= TaskStatus.RUNNING:
            info.status = TaskStatus.FAILED
            info.dump_json(str(info_file))
            if info.location == "tempdir":
                shutil.rmtree(info.root_dir, ignore_errors=True)
            closed = True
    return closed


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
        stages = stages_upto(stages, target)
    pid = f"vaura-pipeline-{_flow_run_id()}"
    with mlflow_parent(project, pid), stop_on_exit():
        run_stages(stages, project, pid, force, stage_timeout_s, acquire_retries)
    publish_links(pid, _tracking_uri(project))
    return stages


def run_stages(stages: list[str], project: Path, pipeline_id: str, force: bool, timeout_s: float,
               acquire_retries: int = 2, tracking_uri: str = "") -> None:
    """One ``dvc repro --single-item`` task per stage, in order."""
    for stage in stages:
        retries = acquire_retries if stage == "acquire" else 0
        repro_stage.with_options(retries=retries, retry_delay_seconds=10)(
            stage, str(project), pipeline_id, force, timeout_s, tracking_uri)


@flow(name="train-vaura", log_prints=True)
def train_vaura(overrides: dict[str, Any] | None = None, target: str = "", name: str = "",
                timeout_s: float = 6 * 3600.0) -> str:
    """Train with parameter overrides as a DVC experiment (``dvc exp run --temp -S key=value ... <target>``).

    ``overrides`` maps dotted params keys to values, e.g. ``{"model.conditioning": "prepend"}``; ``target`` is
    the last stage to run (default ``train@<ablation.baseline>``: the baseline variant's training;
    ``evaluate@<variant>`` to score it too; ``train`` trains every variant). The experiment runs in the flow
    itself, not in a task (one unit: a task would only repeat the flow's own states in its log).
    """
    install_termination_handler()
    project = PROJECT_DIR
    if not target:
        params = yaml.safe_load((project / "params.yaml").read_text()) or {}
        target = f"train@{(params.get('ablation') or {}).get('baseline', 'baseline')}"
    run_id = _flow_run_id()
    exp_name = name or f"train-{run_id}"
    pid = f"train-vaura-{run_id}"
    with mlflow_parent(project, pid), stop_on_exit():
        run_experiment(exp_name, dict(overrides or {}), target, project, pid, timeout_s, get_run_logger().info)
    publish_links(pid, _tracking_uri(project))
    return exp_name


def attach_reports(project: Path) -> list[str]:
    """Attach the ``report`` stage's tables (``<paths.reports>/*.md``) to the flow run as markdown artifacts."""
    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    reports = project / str((params.get("paths") or {}).get("reports", "reports"))
    keys = []
    for md in sorted(reports.glob("*.md")):
        keys.append(f"table-{re.sub(r'[^a-z0-9-]', '-', md.stem.lower())}")
        create_markdown_artifact(md.read_text(), key=keys[-1], description=f"{md.name} from `vaura report`")
    return keys


@flow(name="ablation", log_prints=True)
def ablation(force: bool = False, stage_timeout_s: float = 6 * 3600.0, fan_out: bool = False,
             variant_deployment: str = "ablation-variant/fanout", git_remote: str = "", commit: str = "",
             variant_timeout_s: float = 48 * 3600.0) -> list[str]:
    """The variants of params.yaml ``ablation.variants`` and the paper's tables.

    dvc.yaml runs each variant's stages (``train@<variant>``, ...; the variant list has one definition, in
    params.yaml). By default every stage runs here, one task per stage like ``vaura-pipeline``, in this checkout
    (DVC skips what is up to date; ``dvc push`` afterwards pushes every variant's outputs). With ``fan_out``
    each variant is its own flow run of ``variant_deployment`` on the work pool, so N workers run N variants
    at once (:func:`fan_out_ablation`). Either way the tables are attached to the flow run and the MLflow runs
    share one parent.
    """
    install_termination_handler()
    project = PROJECT_DIR
    pid = f"ablation-{_flow_run_id()}"
    if fan_out:
        return fan_out_ablation(project, pid, variant_deployment, git_remote, commit, force, stage_timeout_s,
                                variant_timeout_s)
    stages = stages_upto(pipeline_stages(project), "report")
    with mlflow_parent(project, pid), stop_on_exit():
        run_stages(stages, project, pid, force, stage_timeout_s)
    publish_links(pid, _tracking_uri(project))
    attach_reports(project)
    return stages


# --- Fan-out: every variant a flow run of its own, in its own clone; git pins the code, DVC moves the data. ---
# A fanned-out ablation leaves, in the git remote: branch ``<pid>`` (the commit it ran + the shared stages' lock
# entries, then + every variant's entries and the report) and ``refs/vaura/<pid>/<variant>`` (each variant
# unit's dvc.lock); in the DVC remote every stage's outputs. ``git checkout <pid> && dvc pull`` has them all.
RESULT_REFS = "refs/vaura"


def git(args: list[str], cwd: Path, timeout_s: float = 600.0) -> str:
    """``git <args>`` in ``cwd``; its stdout, or :class:`StageFailed` with git's own message."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StageFailed(f"`git {' '.join(args)}` in {cwd} ran past {timeout_s:.0f} s") from None
    if out.returncode != 0:
        raise StageFailed(f"`git {' '.join(args)}` in {cwd} failed: {(out.stderr or out.stdout).strip()[-2000:]}")
    return out.stdout.strip()


def unit_dir(name: str) -> Path:
    """Where a fan-out unit keeps its clone: ``$VAURA_WORK_DIR/<name>`` (the worker machine's scratch disk)."""
    return Path(os.environ.get("VAURA_WORK_DIR") or Path(tempfile.gettempdir()) / "vaura-work") / name


def clone_at(repo_url: str, commit: str, dest: Path, log: Callable[[str], None]) -> Path:
    """A working copy of ``repo_url`` at exactly ``commit`` (reused by a retry of the same unit)."""
    if (dest / ".git").exists():
        git(["fetch", "--quiet", "origin"], dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        git(["clone", "--quiet", "--no-checkout", repo_url, str(dest)], dest.parent)
    try:
        git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", commit], dest)
    except StageFailed as exc:
        raise StageFailed(f"commit {commit} is not on any branch of {repo_url} (push it first): {exc}") from None
    log(f"{dest}: clone of {repo_url} at {commit}")
    return dest


def commit_and_push(clone: Path, paths: list[str], message: str, ref: str) -> str:
    """Commit ``paths`` (if they changed) and push HEAD to ``ref`` of origin; returns the commit pushed.

    Without a git identity on the machine (a fresh worker) the commit is signed ``vaura <vaura@hostname>``.
    """
    git(["add", "--", *paths], clone)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=clone).returncode != 0:
        ident: list[str] = []
        if subprocess.run(["git", "config", "user.email"], cwd=clone, capture_output=True).returncode != 0:
            ident = ["-c", "user.name=vaura", "-c", f"user.email=vaura@{os.uname().nodename}"]
        git([*ident, "commit", "--quiet", "-m", message], clone)
    git(["push", "--quiet", "--force", "origin", f"HEAD:{ref}"], clone)
    return git(["rev-parse", "HEAD"], clone)


def dvc_remote_url(project: Path) -> str:
    """The URL of ``project``'s default DVC remote (its config files merged; a local path made absolute)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise StageFailed(f"{project / '.dvc' / 'config'}: no default DVC remote; fan-out units exchange data "
                              "through it (`vaura stack up` sets one)")
        url = str(repo.config["remote"][name]["url"])
    if "://" not in url and not Path(url).is_absolute():
        url = str((project / ".dvc" / url).resolve())
    return url


def use_remote(clone: Path, url: str) -> None:
    """Make ``url`` the clone's default DVC remote (in ``.dvc/config.local``: the clone's own setting)."""
    run_in_group(_dvc() + ["remote", "add", "--local", "--default", "--force", "fanout", url], clone,
                 log=lambda m: None)


def dvc_transfer(verb: str, targets: list[str], clone: Path, log: Callable[[str], None],
                 *extra: str) -> None:
    """``dvc pull|push <targets>``; nothing at all for no targets (DVC would take that as every output)."""
    if targets:
        run_in_group(_dvc() + [verb, *extra, *targets], clone, log=log)


def stage_paths(project: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``stage -> (file deps, outs)`` as DVC resolves dvc.yaml (paths relative to ``project``)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {s.name: ([d.def_path for d in s.deps if not isinstance(d, ParamsDependency)],
                         [o.def_path for o in s.outs]) for s in repo.index.stages}


def _overlap(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def needed_outs(graph: dict[str, tuple[list[str], list[str]]], consumers: list[str],
                producers: list[str]) -> list[str]:
    """The outputs of ``producers`` that the ``consumers`` read: what a unit pulls, and nothing else."""
    deps = [d for c in consumers for d in graph[c][0]]
    return sorted({o for p in producers for o in graph[p][1] if any(_overlap(o, d) for d in deps)})


def upstream(graph: dict[str, tuple[list[str], list[str]]], stages: list[str]) -> set[str]:
    """Every stage whose outputs ``stages`` read, directly or through other stages."""
    seen: set[str] = set()
    todo = list(stages)
    while todo:
        deps = graph[todo.pop()][0]
        for name, (_, outs) in graph.items():
            if name not in seen and any(_overlap(o, d) for o in outs for d in deps):
                seen.add(name)
                todo.append(name)
    return seen


def variant_stages(stages: list[str], variant: str) -> list[str]:
    """The ``foreach`` stages of one variant (``filter@v``, ``train@v``, ...), in pipeline order."""
    return [s for s in stages if s.endswith("@" + variant)]


@task(name="variant-run", task_run_name="variant {variant}", retries=0)
def submit_variant(variant: str, deployment: str, parameters: dict[str, Any], run_name: str,
                   timeout_s: float) -> Any:
    """One variant as a flow run of ``deployment`` on its work pool; waits for it (Prefect polls its state)."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, flow_run_name=run_name, timeout=timeout_s,
                          poll_interval=5, idempotency_key=run_name)


def fan_out_source(project: Path, git_remote: str, commit: str) -> tuple[str, str, str]:
    """``(tracking URI, git remote URL, commit)`` a fan-out runs with, or why it cannot run from ``project``.

    Every worker must reach the tracking server and the git remote; the commit defaults to the project's HEAD,
    refused while tracked files differ from it (the units would silently run something else than the checkout).
    """
    tracking_uri = _tracking_uri(project)
    if not tracking_uri.startswith(("http://", "https://")):
        raise StageFailed(f"fan_out: tracking URI {tracking_uri} is not a server every worker reaches "
                          "(set MLFLOW_TRACKING_URI; `vaura stack up` serves one)")
    repo_url = git_remote or git(["remote", "get-url", "origin"], project)
    if not commit:
        dirty = git(["status", "--porcelain", "--untracked-files=no"], project)
        if dirty:
            raise StageFailed(f"fan_out runs a commit, and {project} has uncommitted changes ({dirty.splitlines()[0]}"
                              " ...): commit and push them, or pass commit=")
        commit = git(["rev-parse", "HEAD"], project)
    return tracking_uri, repo_url, commit


def unfinished(runs: dict[str, Any]) -> list[str]:
    """One line per variant whose flow run did not complete: its name, id, final state and message."""
    lines = []
    for variant, run in runs.items():
        if isinstance(run, BaseException):
            lines.append(f"variant {variant}: not submitted: {run}")
        elif run.state is None or not run.state.is_completed():
            state = run.state.name if run.state is not None else "not started"
            msg = (run.state.message or "").strip() if run.state is not None else ""
            lines.append(f"variant {variant}: flow run {run.name} ({run.id}) {state}" + (f": {msg}" if msg else ""))
    return lines


def fan_out_ablation(project: Path, pid: str, deployment: str, git_remote: str, commit: str, force: bool,
                     stage_timeout_s: float, variant_timeout_s: float) -> list[str]:
    """The ablation over the work pool: shared stages once, each variant its own flow run, then ``report``.

    This flow run works in a clone of ``git_remote`` (default: ``origin`` of the project) at ``commit``
    (default: the project's HEAD, which must be clean and pushed). It pulls the shared stages' outputs from the
    DVC remote, running (and pushing) only those that are not there, and commits their lock entries to branch
    ``<pid>`` so that every variant unit sees them. Each variant unit (:func:`ablation_variant`) clones that
    commit on its worker, pulls what its stages read, runs them, pushes their outputs and its ``dvc.lock``.
    Once all units ended, their lock entries are merged here, the metrics ``report`` reads are pulled, and the
    report is committed to ``<pid>``. A failed unit fails this flow run after the others finished, naming it.
    """
    log = get_run_logger().info
    tracking_uri, repo_url, commit = fan_out_source(project, git_remote, commit)
    remote = dvc_remote_url(project)
    clone = clone_at(repo_url, commit, unit_dir(pid), log)
    use_remote(clone, remote)
    stages = stages_upto(pipeline_stages(clone), "report")
    params = yaml.safe_load((clone / "params.yaml").read_text()) or {}
    variants = list(((params.get("ablation") or {}).get("variants") or {}))
    graph = stage_paths(clone)
    per_variant = {v: variant_stages(stages, v) for v in variants}
    shared = [s for s in stages if s in upstream(graph, [x for v in variants for x in per_variant[v]])
              and "@" not in s]
    with mlflow_parent(clone, pid), stop_on_exit():
        # Shared stages: from the remote when they are there, else run here once and pushed for the units.
        dvc_transfer("pull", shared, clone, log, "--allow-missing")
        run_stages(shared, clone, pid, force, stage_timeout_s, tracking_uri=tracking_uri)
        dvc_transfer("push", shared, clone, log)
        base = commit_and_push(clone, ["dvc.lock"], f"{pid}: shared stages of the ablation at {commit[:12]}",
                               f"refs/heads/{pid}")
        log(f"{pid}: variants {variants} run commit {base} (branch {pid} of {repo_url})")
        futures = {v: submit_variant.submit(v, deployment, {
            "variant": v, "repo_url": repo_url, "commit": base, "pipeline_id": pid, "dvc_remote": remote,
            "tracking_uri": tracking_uri, "result_ref": f"{RESULT_REFS}/{pid}/{v}", "force": force,
            "stage_timeout_s": stage_timeout_s}, f"{pid}-{v}", variant_timeout_s) for v in variants}
        runs = {v: f.result(raise_on_failure=False) for v, f in futures.items()}
        failed = unfinished(runs)
        if failed:
            raise StageFailed(f"{pid}: {len(failed)} of {len(variants)} variant(s) did not complete (the others' "
                              f"results are in {RESULT_REFS}/{pid}/<variant>):\n" + "\n".join(failed))
        merge_variant_locks(clone, {v: f"{RESULT_REFS}/{pid}/{v}" for v in variants}, per_variant)
        done = [x for v in variants for x in per_variant[v]]
        dvc_transfer("pull", needed_outs(graph, ["report"], done), clone, log)
        run_stages(["report"], clone, pid, force, stage_timeout_s, tracking_uri=tracking_uri)
        reports = str((params.get("paths") or {}).get("reports", "reports"))
        head = commit_and_push(clone, ["dvc.lock", reports], f"{pid}: variants {', '.join(variants)} and report",
                               f"refs/heads/{pid}")
    publish_links(pid, tracking_uri)
    attach_reports(clone)
    create_markdown_artifact(
        f"### Ablation `{pid}`\nCode {commit}; results in branch `{pid}` ({head}) of {repo_url}:\n\n"
        f"`git fetch origin {pid} && git checkout {pid} && dvc pull`\n", key=f"{pid}-result",
        description="where the fanned-out ablation's results are")
    shutil.rmtree(clone, ignore_errors=True)  # everything is in the remotes; a failed run keeps its clone
    return shared + done + ["report"]


def merge_variant_locks(clone: Path, refs: dict[str, str], per_variant: dict[str, list[str]]) -> None:
    """Write each variant unit's lock entries (from its result ref) into the clone's ``dvc.lock``."""
    from vaura.io import atomic_write_text

    lock_path = clone / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {"schema": "2.0", "stages": {}}
    for variant, ref in refs.items():
        git(["fetch", "--quiet", "origin", f"+{ref}:{ref}"], clone)
        theirs = yaml.safe_load(git(["show", f"{ref}:dvc.lock"], clone)) or {}
        for stage in per_variant[variant]:
            if stage not in (theirs.get("stages") or {}):
                raise StageFailed(f"{ref}: dvc.lock has no entry for {stage}")
            lock.setdefault("stages", {})[stage] = theirs["stages"][stage]
    atomic_write_text(lock_path, yaml.safe_dump(lock, sort_keys=False))


@flow(name="ablation-variant", log_prints=True, retries=1, retry_delay_seconds=30)
def ablation_variant(variant: str, repo_url: str, commit: str, pipeline_id: str, dvc_remote: str,
                     tracking_uri: str, result_ref: str, force: bool = False,
                     stage_timeout_s: float = 6 * 3600.0) -> str:
    """One variant of a fanned-out ablation, self-contained on whichever worker runs it.

    Clones ``repo_url`` at ``commit`` into ``$VAURA_WORK_DIR``, pulls from ``dvc_remote`` exactly the shared
    outputs its stages read (never recomputing them), runs its stages (``filter@<v>`` ... ``evaluate@<v>``,
    one task each) logging to ``tracking_uri`` under the ablation's MLflow parent, pushes their outputs, and
    pushes its ``dvc.lock`` to ``result_ref`` for the parent flow run. A retry (Prefect's, once) reuses the clone,
    so training resumes from ``last.pt``. Returns the commit pushed to ``result_ref``.
    """
    install_termination_handler()
    log = get_run_logger().info
    clone = clone_at(repo_url, commit, unit_dir(f"{pipeline_id}-{variant}"), log)
    with stop_on_exit():
        use_remote(clone, dvc_remote)
        mine = variant_stages(pipeline_stages(clone), variant)
        if not mine:
            raise StageFailed(f"{clone / 'params.yaml'}: ablation.variants has no variant {variant!r}")
        graph = stage_paths(clone)
        others = [s for s in graph if s not in mine]
        dvc_transfer("pull", needed_outs(graph, mine, others), clone, log)
        run_stages(mine, clone, pipeline_id, force, stage_timeout_s, tracking_uri=tracking_uri)
        dvc_transfer("push", mine, clone, log)
        pushed = commit_and_push(clone, ["dvc.lock"], f"{pipeline_id}: variant {variant}", result_ref)
    log(f"variant {variant}: outputs pushed to {dvc_remote}, dvc.lock to {result_ref} ({pushed})")
    shutil.rmtree(clone, ignore_errors=True)  # everything is in the remotes; a failed unit keeps its clone
    return pushed
