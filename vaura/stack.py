"""The local stack: S3 (localbucket), MLflow server (S3-proxied artifacts), Prefect server, a process work pool +
worker.

One command starts it (`vaura stack up`) and one stops it (`vaura stack down`). Every server binds to
127.0.0.1; ports, the S3 bucket and the state folder (pid records, logs, sqlite databases, ``env.sh``) are
configurable so several stacks (e.g. CI jobs) can run side by side. Services are started in their own
sessions so that stopping one kills its whole process tree (servers fork workers; the Prefect worker starts
flow runs that start DVC, which starts torchrun).

Everything a restart must keep lives in the state folder: MLflow's and Prefect's sqlite databases and the S3
bucket, which localbucket stores as plain folders (``<state>/s3/<bucket>/<key>``). moto's server keeps objects
in memory, and its request recorder, replayed on start, loses multipart uploads (measured: a 30 MB boto3
upload is not restored), so old runs would list without artifacts after ``stack down``/``up``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from vaura.io import atomic_write_json, atomic_write_text

# The local S3 accepts any credentials; these fixed ones make the stack's S3 reproducible for every client.
S3_ACCESS_KEY = "vaura-local"
S3_SECRET_KEY = "vaura-local-secret"
S3_REGION = "us-east-1"
DVC_REMOTE = "vaura-stack"
DEFAULT_REMOTE_URL = "s3://vaura/dvc"  # the committed .dvc/config's remote (the default bucket)
# Every process the stack starts carries this variable (= its state folder), and so does everything they start:
# flow runs, DVC, the stages, torchrun ranks. That is how `down` finds a dead worker's flow runs, which have
# their own sessions and were re-parented to init.
MEMBER_ENV = "VAURA_STACK_MEMBER"


class StackError(RuntimeError):
    """The stack could not be started, inspected or stopped (the message says which service and why)."""


@dataclass
class StackSettings:
    """Where the stack keeps its state and which ports it uses (defaults overridable by ``VAURA_*`` env vars)."""

    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("VAURA_STACK_DIR", ".stack")))
    project_dir: Path = field(default_factory=Path.cwd)
    host: str = "127.0.0.1"
    s3_port: int = field(default_factory=lambda: int(os.environ.get("VAURA_S3_PORT", "9100")))
    mlflow_port: int = field(default_factory=lambda: int(os.environ.get("VAURA_MLFLOW_PORT", "5000")))
    prefect_port: int = field(default_factory=lambda: int(os.environ.get("VAURA_PREFECT_PORT", "4200")))
    bucket: str = field(default_factory=lambda: os.environ.get("VAURA_S3_BUCKET", "vaura"))
    work_pool: str = "vaura-local"
    deploy: bool = True
    timeout_s: float = 180.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.project_dir = Path(self.project_dir).resolve()

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"


def client_env(s: StackSettings) -> dict[str, str]:
    """Environment every client of the stack needs (written to ``<state>/env.sh`` for users' shells)."""
    return {
        "PREFECT_API_URL": s.prefect_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": s.mlflow_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_ENDPOINT_URL_S3": s.s3_url,
        "MLFLOW_S3_ENDPOINT_URL": s.s3_url,
        "VAURA_S3_BUCKET": s.bucket,
        "VAURA_WORK_POOL": s.work_pool,
    }


def _service_env(s: StackSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(client_env(s))
    env["PREFECT_HOME"] = str(s.state_dir / "prefect")
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["VAURA_PROJECT_DIR"] = str(s.project_dir)
    env[MEMBER_ENV] = str(s.state_dir)
    # Flow runs call `dvc` and `vaura`: make this interpreter's bin folder win on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and parallel stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str, accept: Callable[[bytes], bool] = lambda body: True, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200 and accept(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """One started process group, as recorded in ``<state>/stack.json``."""

    name: str
    pid: int
    argv: list[str]
    log: str
    health_url: str


def _start(name: str, argv: list[str], s: StackSettings, env: dict[str, str], health_url: str) -> Service:
    log = s.state_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=s.project_dir, start_new_session=True,
        )
    return Service(name=name, pid=proc.pid, argv=argv, log=str(log), health_url=health_url)


def _wait_healthy(svc: Service, deadline: float, accept: Callable[[bytes], bool] = lambda b: True) -> None:
    while time.monotonic() < deadline:
        if not psutil.pid_exists(svc.pid) or psutil.Process(svc.pid).status() == psutil.STATUS_ZOMBIE:
            raise StackError(f"{svc.name} exited during start-up; last log lines ({svc.log}):\n{_tail(Path(svc.log))}")
        if _http_ok(svc.health_url, accept):
            return
        time.sleep(0.5)
    raise StackError(f"{svc.name} not healthy at {svc.health_url} in time; last log lines ({svc.log}):\n"
                     f"{_tail(Path(svc.log))}")


def _run(argv: list[str], s: StackSettings, env: dict[str, str], what: str, timeout: float) -> str:
    try:
        out = subprocess.run(argv, cwd=s.project_dir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what}: timed out after {timeout:.0f} s ({' '.join(argv)})") from exc
    if out.returncode != 0:
        raise StackError(f"{what} failed (exit {out.returncode}): {' '.join(argv)}\n{out.stdout[-3000:]}\n"
                         f"{out.stderr[-3000:]}")
    return out.stdout


def _state_file(s: StackSettings) -> Path:
    return s.state_dir / "stack.json"


def _read_state(s: StackSettings) -> dict | None:
    path = _state_file(s)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StackError(f"{path}: unreadable stack record ({exc}); remove it after checking no stack runs") from exc


def _worker_registered(s: StackSettings) -> bool:
    req = urllib.request.Request(
        f"{s.prefect_url}/work_pools/{s.work_pool}/workers/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=3.0) as resp:
            return len(json.loads(resp.read())) > 0
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _configure_dvc_remote(s: StackSettings, env: dict[str, str]) -> str:
    """Make the stack's bucket the project's default DVC remote; returns where the setting lives.

    The remote is named in the committed ``.dvc/config`` (``s3://vaura/dvc``): it holds no endpoint and no
    credentials, which come from the environment (``env.sh``: ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
    ...), so a fresh clone reaches it after ``source .stack/env.sh``. Only a non-default bucket is set in
    ``.dvc/config.local`` (machine-specific; ``down`` removes it).
    """
    dvc = [sys.executable, "-m", "dvc"]
    url = f"s3://{s.bucket}/dvc"
    listed = _run(dvc + ["remote", "list", "--project"], s, env, "dvc remote list", 60)
    if [DVC_REMOTE, DEFAULT_REMOTE_URL] not in [line.split()[:2] for line in listed.splitlines()]:
        _run(dvc + ["remote", "add", "--project", "--default", "--force", DVC_REMOTE, DEFAULT_REMOTE_URL], s, env,
             "dvc remote add", 60)
    if url == DEFAULT_REMOTE_URL:
        return f"{DVC_REMOTE} -> {url} (in .dvc/config)"
    _run(dvc + ["remote", "add", "--local", "--force", DVC_REMOTE, url], s, env, "dvc remote add --local", 60)
    return f"{DVC_REMOTE} -> {url} (bucket in .dvc/config.local)"


def _git_origin(project: Path) -> str:
    """The URL of the project's git remote ``origin``, or "" when it has none."""
    out = subprocess.run(["git", "remote", "get-url", "origin"], cwd=project, capture_output=True, text=True,
                         timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def _create_bucket(s: StackSettings) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        boto3.client("s3", endpoint_url=s.s3_url, aws_access_key_id=S3_ACCESS_KEY,
                     aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION).create_bucket(Bucket=s.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # kept from the last `up`
            raise StackError(f"cannot create S3 bucket '{s.bucket}' at {s.s3_url}: {exc}") from exc
    except BotoCoreError as exc:
        raise StackError(f"cannot create S3 bucket '{s.bucket}' at {s.s3_url}: {exc}") from exc


def _close_stale_runs(s: StackSettings) -> int:
    """Runs left RUNNING by processes killed while the stack was down (or by SIGKILL) end as KILLED."""
    from mlflow.tracking import MlflowClient

    from vaura.tracking import close_stale_runs

    return len(close_stale_runs(MlflowClient(s.mlflow_url)))


def up(s: StackSettings, log: Callable[[str], None] = print) -> dict:
    """Start every service, wait until each is healthy, create the bucket/pool, deploy flows, set the DVC remote.

    On any failure the services already started are stopped again, so a failed ``up`` leaves nothing running.
    """
    state = _read_state(s)
    if state and any(psutil.pid_exists(svc["pid"]) for svc in state["services"]):
        raise StackError(f"a stack is already running from {s.state_dir} (`vaura stack down` first)")
    for name, port in (("S3", s.s3_port), ("MLflow", s.mlflow_port), ("Prefect", s.prefect_port)):
        if not _port_free(s.host, port):
            raise StackError(f"{name} port {s.host}:{port} is in use; choose another (see `vaura stack up --help`)")
    s.state_dir.mkdir(parents=True, exist_ok=True)
    (s.state_dir / "prefect").mkdir(exist_ok=True)
    if members(s.state_dir):  # flow runs of a previous stack whose worker died
        _stop_services([], log, state_dir=s.state_dir)
    env = _service_env(s)
    deadline = time.monotonic() + s.timeout_s
    services: list[Service] = []
    record = {"settings": {k: str(v) for k, v in asdict(s).items()}, "services": []}

    def save() -> None:
        record["services"] = [asdict(x) for x in services]
        atomic_write_json(_state_file(s), record)

    try:
        # Start the three servers together (they take seconds each on a busy CPU), then wait for each.
        services.append(_start("s3", [_bin("localbucket"), "--host", s.host, "--port", str(s.s3_port),
                                      str(s.state_dir / "s3")], s, env, f"{s.s3_url}/"))
        services.append(_start("mlflow", [
            _bin("mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{s.state_dir / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{s.bucket}/mlflow",
        ], s, env, f"{s.mlflow_url}/health"))
        services.append(_start("prefect-server", [
            _bin("prefect"), "server", "start", "--host", s.host, "--port", str(s.prefect_port),
        ], s, env, f"{s.prefect_url}/health"))
        save()
        _wait_healthy(services[0], deadline)
        _create_bucket(s)
        log(f"S3             {s.s3_url}  bucket s3://{s.bucket}  (stored in {s.state_dir / 's3'})")
        _wait_healthy(services[2], deadline, lambda body: body.strip() == b"true")
        log(f"Prefect UI     http://{s.host}:{s.prefect_port}")
        prefect = _bin("prefect")
        _run([prefect, "work-pool", "create", s.work_pool, "--type", "process", "--overwrite"], s, env,
             "prefect work-pool create", max(10.0, deadline - time.monotonic()))
        services.append(_start("prefect-worker", [
            prefect, "worker", "start", "--pool", s.work_pool, "--type", "process", "--install-policy", "never",
            "--name", f"vaura-{s.prefect_port}", "--work-queue", "default",
        ], s, env, s.prefect_url + "/health"))
        save()
        if s.deploy:
            origin = _git_origin(s.project_dir)
            if origin:  # where the workers of fanned-out ablation units take the flow code from (prefect.yaml)
                env["VAURA_GIT_REMOTE"] = origin
            _run([prefect, "--no-prompt", "deploy", "--all"], s, env, "prefect deploy --all",
                 max(10.0, deadline - time.monotonic()))
            log(f"deployments    from {s.project_dir / 'prefect.yaml'} on pool {s.work_pool}")
        while not _worker_registered(s):
            _wait_healthy(services[3], deadline)  # raises if the worker died or time ran out
            time.sleep(1.0)
        log(f"worker         pool {s.work_pool}")
        _wait_healthy(services[1], deadline, lambda body: body.strip() == b"OK")
        log(f"MLflow UI      {s.mlflow_url}  (artifacts proxied to s3://{s.bucket}/mlflow)")
        closed = _close_stale_runs(s)
        if closed:
            log(f"MLflow         {closed} run(s) left RUNNING by killed processes marked KILLED")
        log(f"DVC remote     {_configure_dvc_remote(s, env)}")
    except BaseException:
        _stop_services([asdict(x) for x in services], log=lambda m: None)
        _state_file(s).unlink(missing_ok=True)
        raise
    exports = "".join(f"export {k}={v}\n" for k, v in client_env(s).items())
    atomic_write_text(s.state_dir / "env.sh", "# source this file to talk to the vaura stack\n" + exports)
    save()
    log(f"client env     source {s.state_dir / 'env.sh'}")
    return record


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def members(state_dir: Path) -> list[psutil.Process]:
    """Live processes started by the stack of ``state_dir`` or by its flow runs (see ``MEMBER_ENV``)."""
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(MEMBER_ENV) == str(state_dir) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:  # gone meanwhile, or another user's process
            continue
    return found


def _terminate(procs: list[psutil.Process], grace_s: float) -> list[psutil.Process]:
    """SIGTERM each process's group (its whole tree when it leads one), SIGKILL what outlives ``grace_s``."""
    own_group = os.getpgid(0)
    for proc in procs:
        try:
            group = os.getpgid(proc.pid)
            if group != own_group:
                os.killpg(group, signal.SIGTERM)
            else:
                proc.terminate()
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    return alive


def _stop_services(services: list[dict], log: Callable[[str], None], grace_s: float = 15.0,
                   state_dir: Path | None = None) -> list[int]:
    """Stop each service's process tree (newest first), then every other member of the stack.

    Descendants that moved to their own session (Prefect flow runs, DVC subprocesses) are collected with their
    service; those whose worker already died are found by ``MEMBER_ENV``. A service found dead is reported as
    such, not as stopped. Returns the pids still alive afterwards (empty on a clean stop).
    """
    left: list[psutil.Process] = []
    for svc in reversed(services):
        was_alive = _alive(svc["pid"])
        left += _terminate(_tree(svc["pid"]), grace_s)
        log(f"stopped {svc['name']} (pid {svc['pid']})" if was_alive else
            f"{svc['name']} (pid {svc['pid']}) was not running: it had exited (last lines in {svc['log']})")
    if state_dir is not None:
        stray = members(state_dir)
        if stray:
            left += _terminate(stray, grace_s)
            log(f"stopped {len(stray)} process(es) of flow runs whose worker had died: "
                f"{', '.join(f'{p.pid}' for p in stray)}")
    return [p.pid for p in left if _alive(p.pid)]


def down(s: StackSettings, log: Callable[[str], None] = print) -> None:
    """Stop every recorded service and its flow runs (also those of a dead worker), and drop the machine-specific
    DVC remote bucket the stack set, if any; logs, databases and the S3 data stay in the state folder."""
    state = _read_state(s)
    if state is None:
        stray = members(s.state_dir)
        if stray:
            _stop_services([], log, state_dir=s.state_dir)
        else:
            log(f"no stack recorded in {s.state_dir}")
        return
    left = _stop_services(state["services"], log, state_dir=s.state_dir)
    if left:
        raise StackError(f"processes still alive after SIGKILL: {left}")
    project = Path(state["settings"]["project_dir"])
    subprocess.run([sys.executable, "-m", "dvc", "remote", "remove", "--local", DVC_REMOTE], cwd=project,
                   capture_output=True, timeout=60)
    _state_file(s).unlink(missing_ok=True)
    (s.state_dir / "env.sh").unlink(missing_ok=True)


def status(s: StackSettings) -> list[tuple[str, int, bool, bool]]:
    """``(service, pid, alive, healthy)`` per recorded service; empty when no stack is recorded."""
    state = _read_state(s)
    if state is None:
        return []
    return [(svc["name"], svc["pid"], _alive(svc["pid"]), _alive(svc["pid"]) and _http_ok(svc["health_url"]))
            for svc in state["services"]]


def strays(s: StackSettings) -> list[psutil.Process]:
    """Members of the stack outside every live service's tree: flow runs (and their DVC/stage processes) whose
    worker died. ``down`` (or the next ``up``) stops them."""
    state = _read_state(s) or {"services": []}
    owned = {p.pid for svc in state["services"] for p in _tree(svc["pid"])}
    return [p for p in members(s.state_dir) if p.pid not in owned]
