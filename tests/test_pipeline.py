"""dvc.yaml: structure checks (fast) and the micro profile end to end (`dvc repro` of every variant, no-op rerun,
one variant's `-S` override re-running only that variant)."""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline_helpers import BIN as REPO_BIN
from pipeline_helpers import DVC, REPO, clean_env, make_micro_repo, ran_stages, run

from vaura.cli import COMMANDS
from vaura.config import flatten


def _stages(params: Path = REPO / "params.yaml") -> dict:
    """dvc.yaml's stages with ``foreach`` groups expanded over the variants of ``params`` (``name@variant``), as
    DVC does, in file order."""
    variants = yaml.safe_load(params.read_text())["ablation"]["variants"]
    out = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        assert stage["foreach"] == "${ablation.variants}", f"{name}: per-variant stages iterate over the variants"
        for key in variants:
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out


def _groups() -> list[str]:
    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def _interp(text: str, params: dict) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(params[m.group(1)]), text)


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def test_stages_are_the_issue_dag_in_dependency_order() -> None:
    """Flows run the stages in file order, so every dependency on another stage's output must come earlier."""
    assert _groups() == ["acquire", "preprocess", "score", "codec", "avclip", "cache", "filter", "train", "sweep",
                         "evaluate", "report"]
    stages = _stages()
    params = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    produced: dict[str, str] = {}
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            dep = _interp(dep, params)
            owners = [s for out, s in produced.items() if dep == out or dep.startswith(out + "/")
                      or out.startswith(dep + "/")]
            outs_later = [s for s, st in stages.items() if list(stages).index(s) > list(stages).index(name)
                          and any(_interp(_path(o), params) == dep for o in st.get("outs", []) + st.get("metrics", []))]
            assert not outs_later, f"{name} depends on {dep}, produced by later stage(s) {outs_later}"
            if dep.startswith(params["paths.data"] + "/"):
                assert owners, f"{name} depends on {dep}, which no earlier stage writes"
        for out in stage.get("outs", []) + stage.get("metrics", []):
            produced[_interp(_path(out), params)] = name


def test_every_stage_is_a_vaura_command_with_known_params() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def exists(key: str) -> bool:
        node = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    for name, stage in _stages().items():
        group, _, variant = name.partition("@")
        assert stage["cmd"] == f"vaura {group} --params params.yaml" + (f" --variant {variant}" if variant else "")
        assert group in COMMANDS
        if variant:
            assert f"ablation.variants.{variant}" in stage["params"], f"{name} must re-run when its overrides change"
        for p in stage.get("params", []):
            assert exists(p), f"stage {name}: params key {p} not in params.yaml"
            assert not p.startswith("tracking"), "where runs are logged must not invalidate results"


@pytest.fixture(scope="module")
def micro_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_micro_repo(tmp_path_factory.mktemp("pipe") / "repo")


@pytest.mark.slow
@pytest.mark.xdist_group("micro_pipeline")  # one worker, file order: later tests reuse its store (--dist loadgroup)
def test_micro_pipeline_end_to_end_noop_and_experiment(micro_repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    root, env = micro_repo, clean_env()
    log = run(DVC + ["repro"], root, env, timeout=1500)
    expanded = _stages(root / "params.yaml")  # the micro profile's two variants
    assert sorted(ran_stages(log)) == sorted(expanded) and ran_stages(log)[-1] == "report"
    for out in ("data/train/baseline/best.pt", "data/train/prepend/best.pt", "data/eval/baseline/metrics.json",
                "data/eval/prepend/metrics.json", "data/cache/index.csv", "data/sweep/prepend/index.csv",
                "reports/threshold.md", "reports/conditioning.md", "reports/cfg.md", "reports/cfg_curve.csv"):
        assert (root / out).is_file(), out
    conditioning = (root / "reports" / "conditioning.md").read_text()
    assert "| baseline | fusion |" in conditioning and "| prepend | prepend |" in conditioning
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(expanded)

    again = run(DVC + ["repro"], root, env, timeout=300)
    assert ran_stages(again) == [] and "Data and pipelines are up to date." in again

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "micro results"], root, env)
    # One variant's override re-runs that variant's stages (and the report), nothing shared, no other variant.
    exp = run(DVC + ["exp", "run", "-n", "prepend-drop", "-S", "+ablation.variants.prepend.model.cfg_dropout=0.3"],
              root, env, timeout=900)
    assert ran_stages(exp) == ["filter@prepend", "train@prepend", "sweep@prepend", "evaluate@prepend", "report"]
    shown = run(DVC + ["exp", "show", "--csv"], root, env)
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(shown)) if r["Experiment"]}
    assert rows["prepend-drop"]["ablation.variants.prepend.model.cfg_dropout"] == "0.3"

    # MLflow: each pipeline run is one parent with its stages beneath; the experiment's runs form another.
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("vaura").experiment_id
    runs = client.search_runs([exp_id], max_results=500)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("vaura.role") == "pipeline"}
    stage_runs = [r for r in runs if r.data.tags.get("vaura.role") == "stage"]
    assert len(parents) == 2
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in stage_runs)
    by_parent = {pid: {r.data.tags["vaura.stage"] for r in stage_runs if r.data.tags["mlflow.parentRunId"] == pid}
                 for pid in parents}
    first, second = sorted(by_parent.values(), key=len, reverse=True)
    assert {"acquire", "preprocess", "score", "filter", "codec", "avclip", "cache", "train", "evaluate",
            "report"} <= first
    assert {"train", "evaluate", "report"} <= second and not second & {"acquire", "preprocess", "cache"}
    trains = [r for r in stage_runs if r.data.tags["vaura.stage"] == "train"]
    assert sorted((r.data.tags["vaura.variant"], r.data.params["model.conditioning"], r.data.params["model.cfg_dropout"])
                  for r in trains) == [("baseline", "fusion", "0.1"), ("prepend", "prepend", "0.1"),
                                       ("prepend", "prepend", "0.3")]


@pytest.mark.slow
@pytest.mark.xdist_group("micro_pipeline")
def test_train_sweep_and_evaluate_read_only_what_the_stage_before_wrote(micro_repo: Path) -> None:
    """Data flows forward: with the split lists and the clip manifest gone, train (logging validation clips muxed
    onto their videos), sweep and evaluate (no --variant: every cached clip) still run, finding each video through
    the cache index."""
    root, env = micro_repo, clean_env()
    run(DVC + ["repro", "sweep"], root, env, timeout=1500)
    data = root / "data"
    shutil.rmtree(data / "splits")  # every variant's lists: without --variant, nothing reads them
    (data / "clips" / "manifest.csv").unlink()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(total_steps=2, eval_every=2, ckpt_every=2, log_audio_every=2, n_log_clips=1)
    (root / "forward.yaml").write_text(yaml.safe_dump(params))
    run(["vaura", "train", "--params", "forward.yaml", "--resume", "never"], root, env, timeout=600)
    run(["vaura", "sweep", "--params", "forward.yaml"], root, env, timeout=600)
    run(["vaura", "evaluate", "--params", "forward.yaml", "--no-track"], root, env, timeout=600)
    assert (data / "eval" / "metrics.json").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vaura").experiment_id],
                              "tags.`vaura.stage` = 'train'", order_by=["attributes.start_time DESC"], max_results=1)
    logged = {f.path for f in client.list_artifacts(runs[0].info.run_id, "samples/reference")}
    assert any(p.endswith(".mp4") for p in logged), logged  # the video was found without splits/val.csv


def _body(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def _click(browser, xpath: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 120).until(ec.element_to_be_clickable((By.XPATH, xpath))).click()


def _close_assistant(browser) -> None:
    """MLflow 3.17 may open its assistant panel over a third of the page (hiding columns); a user closes it."""
    from selenium.webdriver.common.by import By

    for button in browser.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        button.click()


@pytest.mark.slow
@pytest.mark.xdist_group("micro_pipeline")
def test_mlflow_ui_shows_the_ablation_in_a_real_browser(micro_repo: Path, tmp_path: Path) -> None:
    """Headless Chromium on `mlflow ui` over the micro pipeline's store, from the link `vaura ui` prints: the runs
    table with the evaluate runs by name and their γ column, the CFG table in the pipeline run's description
    (2 clicks), the γ param on an evaluate run (1 click) and an audio player for its .wav (3 more clicks).
    With $VAURA_UI_SCREENSHOTS set, the views are saved there as PNGs (docs/mlflow-ui/)."""
    import shlex

    from browser_helpers import browser_or_skip, chromium, free_port, served
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    binary, driver = browser_or_skip()
    root, env = micro_repo, clean_env()
    if not (root / "reports" / "cfg.md").is_file():  # not after the end-to-end test (run alone): build the store
        run(DVC + ["repro"], root, env, timeout=1500)
    gammas = [f"{g:g}" for g in yaml.safe_load((root / "params.yaml").read_text())["sweep"]["cfg_scales"]]
    # the newest pipeline run that evaluated (the one `reports/` was last written for): its rows are at the top
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("vaura").experiment_id
    newest = client.search_runs([exp_id], "tags.`vaura.stage` = 'evaluate'", order_by=["attributes.start_time DESC"],
                                max_results=1)[0]
    pipeline = client.get_run(newest.data.tags["mlflow.parentRunId"]).info.run_name
    evaluated = {r.info.run_name for r in client.search_runs(
        [exp_id], f"tags.`mlflow.parentRunId` = '{newest.data.tags['mlflow.parentRunId']}'")}
    variant = newest.data.tags.get("vaura.variant")  # every variant of the ablation evaluates under this parent
    names = sorted(n for n in evaluated
                   if re.fullmatch(rf"evaluate · {re.escape(variant)} · γ [-0-9.e]+ · test", n))
    assert sorted(n.split(" · ")[-2] for n in names) == sorted(f"γ {g}" for g in gammas)
    clicked, clicked_gamma = names[-1], names[-1].split(" · ")[-2].removeprefix("γ ")
    port = free_port()
    printed = run([str(REPO_BIN / "vaura"), "ui", "--params", "params.yaml", "--port", str(port)], root, env)
    link = re.search(r"(http://127\.0\.0\.1:\d+/#/experiments/\S+)", printed).group(1)
    command = shlex.split(re.search(r"MLflow UI: (.+)", printed).group(1))
    shots = Path(os.environ["VAURA_UI_SCREENSHOTS"]) if os.environ.get("VAURA_UI_SCREENSHOTS") else None

    def shot(browser, name: str) -> None:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(shots / f"{name}.png"))

    with served(command, root, env, port, tmp_path / "mlflow-ui.log"), chromium(binary, driver) as browser:
        wait = WebDriverWait(browser, 180)
        # the link opens the runs table (not the GenAI overview), parents expanded on their evaluate runs
        browser.get(link)
        columns = ("gamma", "model.conditioning", "onset_f1")  # (a column no run has a value for is hidden)
        wait.until(lambda b: _close_assistant(b) or all(n in _body(b) for n in (*names, *columns)))
        shot(browser, "runs-table")
        text = _body(browser)
        assert "Run Name" in text and pipeline in text and "Overview" not in text

        # click 1: the pipeline run; click 2: "Show more" — its description holds Table IV as a rendered table
        _click(browser, f"//a[normalize-space(.)='{pipeline}']")
        wait.until(lambda b: _close_assistant(b) or "Table II" in _body(b))
        _click(browser, "//*[normalize-space(text())='Show more']")
        table = wait.until(lambda b: b.find_element(By.XPATH, "//h1[contains(., 'Table IV')]/following::table[1]"))
        cells = [[c.text for c in row.find_elements(By.XPATH, "./th|./td")]
                 for row in table.find_elements(By.TAG_NAME, "tr")]
        md_rows = [[c.strip().replace("\\|", "|") for c in line.strip().strip("|").split(" | ")]
                   for line in (root / "reports" / "cfg.md").read_text().splitlines()
                   if line.startswith("| ")]
        assert cells == md_rows  # the same numbers as reports/cfg.md
        assert [r[0].split(" ")[0] for r in cells[1:len(gammas) + 1]] == gammas  # "0 (null condition only)"
        browser.execute_script("arguments[0].scrollIntoView()", table)
        shot(browser, "pipeline-description")

        # an evaluate run (1 click from the table): its γ as a parameter
        browser.get(link)
        _click(browser, f"//a[normalize-space(.)='{clicked}']")
        wait.until(lambda b: _close_assistant(b) or re.search(rf"\ngamma\n{re.escape(clicked_gamma)}\n", _body(b)))
        shot(browser, "evaluate-run")

        # Artifacts → audio → the .wav: MLflow's player (an <audio> with controls) has decoded the clip
        _click(browser, "//*[normalize-space(text())='Artifacts']")
        _click(browser, "//*[normalize-space(text())='audio']")
        _click(browser, "//*[contains(normalize-space(text()), '.wav')]")
        duration = wait.until(lambda b: b.execute_script(
            "for (const e of document.querySelectorAll('*')) { const a = e.shadowRoot && e.shadowRoot.querySelector"
            "('audio'); if (a && a.controls && a.duration > 0) return a.duration; } return null;"))
        window = float(pd.read_csv(next((root / "data" / "sweep").rglob("index.csv")))["window_s"].iloc[0])
        assert duration == pytest.approx(window, abs=0.05)
        shot(browser, "audio-artifact")
