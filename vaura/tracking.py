"""MLflow tracking shared by every pipeline stage.

``stage_run(stage, params)`` opens one MLflow run per stage execution, nested under one *parent* run per
pipeline run, so that the MLflow UI shows a pipeline (``dvc repro`` / ``dvc exp run`` / a Prefect flow) as
one row with its stages beneath it.

Pipeline id (tag ``vaura.pipeline_id``, used to find or create the parent run):
``$VAURA_PIPELINE_ID`` if set (Prefect flows set it so that all their stages share a parent), otherwise
``<git commit[:12]>[-dirty]-<md5(params.yaml)[:8]>`` — the same code and the same parameters are the same
pipeline run, so re-running one stage after a failure lands under the same parent.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else ``params.yaml`` section ``tracking.uri`` (default
``sqlite:///mlruns.db``); with a local store, artifacts go to ``tracking.artifact_root`` (``mlartifacts/``).
Every param, tag and config artifact passes through :mod:`vaura.redact` first (credential-named keys masked,
``user:password@`` and presigned-URL signatures removed from values).

Run states: every run ends FINISHED, FAILED or KILLED. A stage run ends KILLED on SIGTERM/SIGINT (the
handler installed while the stage runs turns them into an exception, so the run is closed before the process
exits). Each run records its *owner* process (``vaura.owner.*`` tags: host, pid, start time); a run still
RUNNING whose owner is gone (SIGKILL, power loss) is closed on the next start of any stage, flow or
``vaura stack up`` (:func:`close_stale_runs`). The parent run's owner is the process that runs the whole
pipeline: the Prefect flow (:func:`pipeline_parent`), else the ``dvc`` process running the stages, else the
stage itself. Stages never end a parent they do not own, so the parent stays RUNNING, without an end time,
from its first stage to its end; a parent whose ``dvc`` owner exited is closed with its children's outcome.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from vaura.config import bounded, flatten, from_dict, load_yaml
from vaura.redact import MASK, SECRET_KEY, redact, redact_tree

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PIPELINE_TAG = "vaura.pipeline_id"
ROLE_TAG = "vaura.role"
VARIANT_TAG = "vaura.variant"
# MLflow's own tags: a run's or experiment's markdown description, and the experiment type the UI's selector sets
NOTE_TAG = "mlflow.note.content"
KIND_TAG = "mlflow.experimentKind"
# The UI (3.x) opens an experiment on its GenAI overview unless the URL asks for the classic ML workflow; a
# shared view (experiment tag mlflow.sharedViewState.<key>, named in the URL) preselects the ablation columns.
VIEW_KEY = "vaura-ablation"
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning&viewStateShareKey=" + VIEW_KEY
ABLATION_COLUMNS = (
    [f"params.`{p}`" for p in ("variant", "gamma", "model.conditioning", "filter.threshold", "test_set")]
    + [f"metrics.`{m}`" for m in ("onset_f1", "fad", "kld", "ib", "sync_ms")]
)
EXPERIMENT_NOTE = """\
**vaura** — V-AURA video-to-audio: one *parent* run per pipeline run (`dvc repro`, `dvc exp run`, a Prefect
flow), named `pipeline · <DVC experiment or profile> · <pipeline id>`, with one child run per stage beneath it.

- **Paper tables** (II threshold, III conditioning, IV CFG γ): the parent run's description and its
  *Artifacts → tables* (written by the `report` stage).
- **Ablation runs**: `evaluate · <variant> · γ <scale> · <test set>`, one per group; their params `variant`,
  `model.conditioning`, `filter.threshold`, `gamma`, `test_set`, `train.seed`, `sweep.seed` are the axes
  (Columns / Group by, or select runs → Compare).
- **Listening**: each evaluate run's *Artifacts → audio / video / spectrogram* holds example clips with events.
"""
OWNER_HOST, OWNER_PID, OWNER_START, OWNER_KIND = ("vaura.owner.host", "vaura.owner.pid", "vaura.owner.start",
                                                  "vaura.owner.kind")
_MAX_PARAM_CHARS = 6000
_MAX_NOTE_CHARS = 8000  # MLflow's tag value limit


@dataclass
class TrackingConfig:
    """Where MLflow runs and artifacts go (``MLFLOW_TRACKING_URI`` overrides ``uri``)."""

    uri: str = "sqlite:///mlruns.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "vaura"
    system_metrics: bool = True
    system_metrics_interval_s: float = bounded(10.0, gt=0)


def safe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened params with credential-like keys masked and URIs stripped of user info."""
    out = {}
    for key, value in flatten(params).items():
        out[key] = MASK if SECRET_KEY.search(key) else redact(value)
    return out


def tracking_config(params: Mapping[str, Any] | None = None, params_file: str | Path = "params.yaml") -> TrackingConfig:
    """The ``tracking`` section from ``params`` if present, else from ``params_file``, else defaults."""
    if params is not None and "tracking" in params:
        return from_dict(TrackingConfig, params["tracking"], "params.tracking")
    if Path(params_file).is_file():
        data = load_yaml(params_file)
        if "tracking" in data:
            return from_dict(TrackingConfig, data["tracking"], "params.tracking")
    return TrackingConfig()


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit() -> tuple[str, bool]:
    """(HEAD commit or ``"unknown"``, whether tracked files differ from it)."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return commit, dirty


def md5_file(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pipeline_id(params_file: str | Path = "params.yaml") -> str:
    """See the module docstring."""
    env = os.environ.get("VAURA_PIPELINE_ID")
    if env:
        return env
    commit, dirty = git_commit()
    phash = md5_file(params_file)[:8] if Path(params_file).is_file() else "noparams"
    return f"{commit[:12]}{'-dirty' if dirty else ''}-{phash}"


def data_hash_tags(stage: str, data_files: Sequence[str | Path] = (), lock_file: str | Path = "dvc.lock") -> dict[str, str]:
    """Tags identifying the data a stage saw: its dependency hashes in ``dvc.lock`` and md5s of ``data_files``."""
    tags: dict[str, str] = {}
    lock = Path(lock_file)
    if lock.is_file():
        tags["dvc.lock.md5"] = md5_file(lock)
        entry = (load_yaml(lock).get("stages") or {}).get(stage) or {}
        for dep in entry.get("deps") or []:
            digest = dep.get("md5") or dep.get("hash") or dep.get("etag")
            if digest and "path" in dep:
                tags[f"data.dep.{dep['path']}"] = str(digest)
    for f in data_files:
        if Path(f).is_file():
            tags[f"data.md5.{Path(f).as_posix()}"] = md5_file(f)
    return tags


def _local_store(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "databricks"))


def _experiment_id(client: Any, cfg: TrackingConfig, uri: str) -> str:
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        location = Path(cfg.artifact_root).resolve().as_uri() if _local_store(uri) else None
        try:
            client.create_experiment(cfg.experiment, artifact_location=location)
        except Exception:  # another stage created it between our check and create
            pass
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise RuntimeError(f"MLflow experiment {cfg.experiment!r} could not be created in {redact(uri)}")
    # A classic training experiment with a description; set once, so an edit made in the UI is kept.
    for key, value in ((KIND_TAG, "custom_model_development"), (NOTE_TAG, EXPERIMENT_NOTE)):
        if key not in exp.tags:
            _set_experiment_tag(client, exp.experiment_id, key, value, once=True)
    view = json.dumps({"selectedColumns": ABLATION_COLUMNS})
    if exp.tags.get(f"mlflow.sharedViewState.{VIEW_KEY}") != view:  # ours: the UI cannot edit a shared view
        _set_experiment_tag(client, exp.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", view, once=False)
    return exp.experiment_id


def _set_experiment_tag(client: Any, experiment_id: str, key: str, value: str, once: bool) -> None:
    """Set a tag that stages started side by side may all be setting: the loser of a sqlite INSERT race
    (``UNIQUE constraint failed``) re-reads, and is done when the winner wrote the tag (any value for a
    set-once tag, the same value otherwise)."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        tags = client.get_experiment(experiment_id).tags
        if key not in tags or (not once and tags[key] != value):
            raise


def runs_link(base_url: str, experiment_id: str) -> str:
    """The MLflow UI address of an experiment's runs table (not the GenAI overview MLflow 3 opens by default)."""
    return base_url.rstrip("/") + "/" + RUNS_VIEW.format(id=experiment_id)


def experiment_id(params: Mapping[str, Any] | None = None, params_file: str | Path = "params.yaml") -> str | None:
    """Id of the configured experiment in the configured store, or None when it does not exist (yet)."""
    from mlflow.tracking import MlflowClient

    cfg = tracking_config(params, params_file)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # do not create an empty store just to look
    exp = MlflowClient(uri).get_experiment_by_name(cfg.experiment)
    return None if exp is None else exp.experiment_id


def pipeline_run_name(pid: str, profile: str | None) -> str:
    """``pipeline · <DVC experiment or profile> · <commit>``: what a parent run is, readable in the runs table."""
    what = os.environ.get("DVC_EXP_NAME") or profile or "params"
    return f"pipeline · {what} · {pid}"


def _pipeline_note(pid: str, commit: str, dirty: bool, profile: str | None) -> str:
    return (f"Pipeline run `{pid}`: code `{commit[:12]}`{' with uncommitted changes' if dirty else ''}, profile "
            f"`{profile or 'unknown'}`; its stages are the child runs (expand this row). The `report` stage "
            "replaces this text with the paper tables.\n")


class StageTerminated(SystemExit):
    """SIGTERM/SIGINT arrived while a stage ran: unwinds the stage so its MLflow run is closed as KILLED."""


def _process_start(proc: Any) -> str:
    return f"{proc.create_time():.2f}"


def owner_tags(pid: int | None = None, kind: str = "stage") -> dict[str, str]:
    """Tags naming the process that owns a run (host, pid, start time: a reused pid is not mistaken for it)."""
    import psutil

    proc = psutil.Process(pid)
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(proc.pid), OWNER_START: _process_start(proc),
            OWNER_KIND: kind}


def _owner_alive(tags: Mapping[str, str]) -> bool:
    import psutil

    try:
        proc = psutil.Process(int(tags[OWNER_PID]))
        return _process_start(proc) == tags.get(OWNER_START) and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError, KeyError):
        return False


def _pipeline_owner() -> tuple[int, str]:
    """(pid, kind) of the process that runs the whole pipeline around this stage: the nearest ``dvc`` ancestor
    (``dvc repro`` / ``dvc exp run``), else this process."""
    import psutil

    for proc in psutil.Process().parents():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if "dvc" in (Path(a).name for a in argv[:3]):  # `dvc ...`, `python .../dvc ...`, `python -m dvc ...`
            return proc.pid, "dvc"
    return os.getpid(), "stage"


def _close_parent(client: Any, run: Any, status: str | None = None) -> None:
    """End a parent run: with ``status``, or with its children's outcome (FAILED/KILLED if any child was)."""
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=1000)
    ends = [c.info.end_time for c in children if c.info.end_time]
    if status is None:
        states = {c.info.status for c in children}
        status = "FAILED" if "FAILED" in states else "KILLED" if states & {"KILLED", "RUNNING"} else "FINISHED"
    client.set_terminated(run.info.run_id, status=status, end_time=max(ends) if ends else None)


def close_stale_runs(client: Any, experiment_ids: Sequence[str] | None = None) -> list[str]:
    """Close the RUNNING runs of this host whose owner process is gone; returns their run ids.

    A stage run becomes KILLED; a parent run owned by a flow becomes KILLED (the flow never closed it), one owned
    by ``dvc`` gets its children's outcome. Runs of other hosts and runs without owner tags are left alone.
    """
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    host = socket.gethostname()
    running = client.search_runs(list(experiment_ids),
                                 filter_string=f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'",
                                 max_results=1000)
    closed = []
    for run in sorted(running, key=lambda r: r.data.tags.get(ROLE_TAG) == "pipeline"):  # children first
        tags = run.data.tags
        if _owner_alive(tags):
            continue
        if tags.get(ROLE_TAG) == "pipeline" and tags.get(OWNER_KIND) == "dvc":
            _close_parent(client, run)
        else:
            client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def _find_parent(client: Any, experiment_id: str, pid: str) -> Any | None:
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{ROLE_TAG}` = 'pipeline'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return found[0] if found else None


def _open_parent(client: Any, experiment_id: str, pid: str, commit: str, owner: Mapping[str, str],
                 dirty: bool = False, profile: str | None = None) -> Any:
    """The pipeline's parent run, created (owned by ``owner``) or reopened as RUNNING with a fresh owner."""
    run = _find_parent(client, experiment_id, pid)
    if run is None:
        tags = {PIPELINE_TAG: pid, ROLE_TAG: "pipeline", "mlflow.source.git.commit": commit, **owner,
                NOTE_TAG: _pipeline_note(pid, commit, dirty, profile)}
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        return client.create_run(experiment_id, run_name=pipeline_run_name(pid, profile), tags=tags)
    if run.info.status != "RUNNING":  # a re-run after the pipeline ended (e.g. a stage retried later)
        client.update_run(run.info.run_id, status="RUNNING")
        for key, value in owner.items():
            client.set_tag(run.info.run_id, key, value)
        return client.get_run(run.info.run_id)
    return run


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While the body runs, SIGTERM (and SIGINT) raise :class:`StageTerminated` instead of killing the process,
    so context managers close their runs; outside the main thread (signals cannot be caught there) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise StageTerminated(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, handler in previous.items():
        if handler in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def pipeline_parent(pid: str, params: Mapping[str, Any] | None = None, uri: str | None = None,
                    params_file: str | Path = "params.yaml") -> Iterator[str]:
    """Own the parent run of pipeline ``pid`` for the duration of the body (a Prefect flow run); yields its id.

    It ends FINISHED, FAILED when the body raises, KILLED when it is cancelled (SIGTERM, KeyboardInterrupt or
    a cancellation exception that is not an ``Exception``).
    """
    from mlflow.tracking import MlflowClient

    cfg = tracking_config(params, params_file)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    client = MlflowClient(uri)
    exp_id = _experiment_id(client, cfg, uri)
    close_stale_runs(client, [exp_id])
    run = _open_parent(client, exp_id, pid, git_commit()[0], owner_tags(kind="flow"))
    status = "KILLED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:
        _close_parent(client, run, status)


def _profile(params_file: str | Path) -> str | None:
    path = Path(params_file)
    if not path.is_file():
        return None
    return str(load_yaml(path).get("profile") or "") or None


def variant_name(explicit: str | None = None) -> str | None:
    """The ablation variant a stage runs for: ``explicit`` (a stage's ``--variant``), else the DVC experiment's
    name (``dvc exp run -n prepend -S ...`` sets ``$DVC_EXP_NAME``), else None (a plain run: no variant claimed)."""
    return explicit or os.environ.get("DVC_EXP_NAME") or None


def run_name(stage: str, variant: str | None = None, *details: str) -> str:
    """``stage · variant · details`` (e.g. ``evaluate · prepend · γ 3 · test``): distinct names in the runs table,
    chart legends and the compare view."""
    return " · ".join(p for p in (stage, variant, *details) if p)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    *,
    params_file: str | Path = "params.yaml",
    data_files: Sequence[str | Path] = (),
    resume_run_id: str | None = None,
    variant: str | None = None,
    name: str | None = None,
    config: TrackingConfig | None = None,
) -> Iterator[Any]:
    """Open the MLflow run of one stage execution (nested under the pipeline's parent run); yields the ActiveRun.

    Logs ``params`` (flattened, redacted: pass only what the stage uses) as params and as the
    ``config/params.json`` artifact, and tags the run with the stage, pipeline id, git commit, DVC experiment
    name (``$DVC_EXP_NAME``) and data hashes. The run is named ``name`` or :func:`run_name` ``(stage, variant)``
    (variant: :func:`variant_name`), which is also the tag ``vaura.variant``. Runs go where ``config`` says, else
    where ``params`` / ``params_file`` say (:func:`tracking_config`).
    ``resume_run_id`` reopens that run instead (a training resumed from a checkpoint stays one run) when it
    exists in the store. ``config``: the ``tracking`` section when the caller has it already (else it is read
    from ``params`` or ``params_file``). The run ends FAILED if the body raises, KILLED on SIGTERM/SIGINT.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = config or tracking_config(params, params_file)
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = user_uri or cfg.uri
    mlflow.set_tracking_uri(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that so a later stage_run in the same
    # process (tests, notebooks, in-process flows) still honours its own params instead of this run's store.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = MlflowClient(uri)
    exp_id = _experiment_id(client, cfg, uri)
    close_stale_runs(client, [exp_id])
    commit, dirty = git_commit()
    pid = pipeline_id(params_file)
    owner_pid, owner_kind = _pipeline_owner()
    parent = _open_parent(client, exp_id, pid, commit, owner_tags(owner_pid, owner_kind), dirty, _profile(params_file))
    owns_parent = parent.data.tags.get(OWNER_PID) == str(os.getpid()) and parent.data.tags.get(OWNER_KIND) == "stage"
    run_tags = {
        "vaura.stage": stage,
        PIPELINE_TAG: pid,
        ROLE_TAG: "stage",
        "mlflow.source.git.commit": commit,
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        **data_hash_tags(stage, data_files),
        **owner_tags(),
    }
    variant = variant_name(variant)
    if variant:
        run_tags[VARIANT_TAG] = variant
    if os.environ.get("DVC_EXP_NAME"):
        run_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    run_tags.update({k: str(redact(v)) for k, v in (tags or {}).items()})
    if cfg.system_metrics:
        mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_interval_s)
    if resume_run_id:
        try:
            client.get_run(resume_run_id)
        except Exception:  # not in this store (e.g. another tracking URI): start a fresh run
            resume_run_id = None
    status = "FAILED"
    start = (
        dict(run_id=resume_run_id)
        if resume_run_id
        else dict(experiment_id=exp_id, run_name=name or run_name(stage, variant), parent_run_id=parent.info.run_id,
                  tags=run_tags)
    )
    with _terminate_as_exception(), mlflow.start_run(
        nested=mlflow.active_run() is not None, log_system_metrics=cfg.system_metrics, **start
    ) as run:
        try:
            if resume_run_id:
                mlflow.set_tags(run_tags)
            else:
                log_params(params)
                log_json(params, "config/params.json")
            yield run
            status = "FINISHED"
        except (StageTerminated, KeyboardInterrupt):
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status=status)
            if owns_parent:
                client.set_terminated(parent.info.run_id, status=status)


def describe_pipeline(note: str, tables: Mapping[str, Any], files: Sequence[str | Path] = ()) -> str:
    """Put results where a user looks first, the active stage run's *parent* (pipeline) run: ``note`` (markdown)
    becomes its description, each DataFrame in ``tables`` an MLflow table ``tables/<name>.json`` (the UI's
    table view) and ``files`` artifacts under ``tables/``. A re-run replaces them. Returns the parent's run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("describe_pipeline needs an active stage run (vaura.tracking.stage_run)")
    parent = client.get_run(active.info.run_id).data.tags["mlflow.parentRunId"]
    if len(note) > _MAX_NOTE_CHARS:
        note = note[:_MAX_NOTE_CHARS - 80] + "\n\n… (cut to MLflow's tag limit: the full text is in Artifacts → tables)\n"
    client.set_tag(parent, NOTE_TAG, note)
    existing = {f.path for f in client.list_artifacts(parent, "tables")}
    for name, df in tables.items():
        artifact = f"tables/{name}.json"
        if artifact in existing:  # log_table would append the rows to the earlier report's: replace the file
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / f"{name}.json"
                df.to_json(local, orient="split", index=False)
                client.log_artifact(parent, str(local), "tables")
        else:
            client.log_table(parent, df, artifact)
    for f in files:
        client.log_artifact(parent, str(f), "tables")
    return parent



def log_params(params: Mapping[str, Any]) -> None:
    """Log a nested dict as flattened, redacted MLflow params (long values truncated to MLflow's limit)."""
    import mlflow

    flat = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in safe_params(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_params_file(path: str | Path, artifact_path: str = "config") -> None:
    """Log a params YAML file as an artifact, redacted like every other sink (the raw file may hold a secret)."""
    import mlflow
    import yaml

    redacted = redact_tree(load_yaml(path))
    mlflow.log_text(yaml.safe_dump(redacted, sort_keys=False), f"{artifact_path}/{Path(path).name}")


def log_json(obj: Any, artifact_file: str) -> None:
    """Log a JSON-serialisable object as an artifact (e.g. ``"config/resolved.json"``)."""
    import mlflow

    mlflow.log_dict(json.loads(json.dumps(redact_tree(obj), default=str)), artifact_file)
