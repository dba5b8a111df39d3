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
    assert trainer["command"][:4] == ["torchrun", "-m", "vaura.cli", "train"]
    assert trainer["numNodes"] > 1
    from vaura.cli import build_parser  # the command torchrun starts must exist and take --params

    assert build_parser("train").parse_args(trainer["command"][3:]).params.name == "params.yaml"


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
    assert entry == {"vaura_pipeline", "train_vaura", "ablation"}
    for d in deployments:
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (REPO / path).read_text()
        assert d["work_pool"]["name"] == "{{ $VAURA_WORK_POOL }}"
