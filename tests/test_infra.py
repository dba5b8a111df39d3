"""Templates for users beyond one machine (cannot run here): they must at least be consistent with the code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


def test_trainjob_runs_the_torchrun_training_entry_point() -> None:
    job = yaml.safe_load((INFRA / "k8s" / "trainjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    command = trainer["command"]
    assert command[0] == "torchrun" and command[command.index("-m"):][:3] == ["-m", "vaura.cli", "train"]
    assert trainer["numNodes"] > 1
    from vaura.cli import build_parser  # the command torchrun starts must exist and take --params

    assert build_parser("train").parse_args(command[command.index("-m") + 2:]).params.name == "params.yaml"


def test_prefect_k8s_job_template_declares_every_placeholder() -> None:
    template = json.loads((INFRA / "k8s" / "prefect-work-pool-job-template.json").read_text())
    used = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"undeclared job template variables: {sorted(used - declared)}"


def test_compose_stack_has_the_servers_and_matches_the_deployments() -> None:
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    assert {"minio", "postgres", "mlflow", "prefect", "worker"} <= set(compose["services"])
    assert "--workers 1" in compose["services"]["mlflow"]["command"]
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    entry = {d["entrypoint"].split(":")[1] for d in deployments}
    assert entry == {"vaura_pipeline", "train_vaura", "ablation", "ablation_variant"}
    # A fan-out unit runs on any machine: its flow code comes from the git remote, not from this folder.
    (variant,) = [d for d in deployments if d["entrypoint"].endswith(":ablation_variant")]
    assert variant["pull"] == [{"prefect.deployments.steps.git_clone": {"repository": "{{ $VAURA_GIT_REMOTE }}"}}]
    assert variant["work_pool"]["work_queue_name"] == "variants"
    for d in deployments:
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (REPO / path).read_text()
        assert d["work_pool"]["name"] == "{{ $VAURA_WORK_POOL }}"


def _flags(tokens: list[str]) -> dict[str, str]:
    return dict(t[2:].split("=", 1) for t in tokens if t.startswith("--") and "=" in t)


def test_slurm_and_trainjob_share_the_entry_point_and_rendezvous_settings() -> None:
    """What tests/test_train_multinode.py runs (the sbatch's torchrun line) is what the TrainJob runs."""
    from train_helpers import SBATCH, sbatch_exports, sbatch_torchrun

    slurm = sbatch_torchrun()
    job = yaml.safe_load((INFRA / "k8s" / "trainjob.yaml").read_text())["spec"]["trainer"]
    k8s = job["command"]
    entry = slurm[slurm.index("-m", 3):]
    assert entry[:3] == ["-m", "vaura.cli", "train"] and entry[-2:] == ["--resume", "auto"]
    assert k8s[k8s.index("-m"):] == ["-m", "vaura.cli", "train", "--params", "params.yaml", "--resume", "auto"]
    s, k = _flags(slurm), _flags(k8s)
    assert s["rdzv-backend"] == k["rdzv-backend"] == "c10d"
    default_restarts = re.search(r"^MAX_RESTARTS=\$\{MAX_RESTARTS:-(\d+)\}$", SBATCH.read_text(), flags=re.M)
    assert s["max-restarts"] == "$MAX_RESTARTS" and k["max-restarts"] == default_restarts.group(1) != "0"
    assert {"rdzv-endpoint", "rdzv-id"} <= set(s) & set(k)
    env = {e["name"]: e["value"] for e in job["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == sbatch_exports()["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
