"""`podium tune`: search-space validation, a real study on tiny data, pruning, failures,
resuming, two workers on PostgreSQL and a worker killed mid-trial.

Every trial is a real run (test_efficientnet, 32 px, 1-2 epochs on 36 generated images).
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import fast_overrides, make_folder

from podium.cli import main
from podium.errors import PodiumError
from podium.schema import parse_overrides
from podium.tuning.space import parse_search, split_search
from podium.tuning.study import prepare_settings, retry_callback_class

REPO = Path(__file__).resolve().parents[1]
States = optuna.trial.TrialState


def tune_raw(tmp_path: Path, data: Path, search: dict, **extra) -> dict:
    raw = parse_overrides(fast_overrides(tmp_path, **{"data.train": str(data), "output.report": "false", **extra}))
    raw["search"] = search
    return raw


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load(root: Path, name: str, storage: str | None = None):
    url = storage or f"sqlite:///{(root / name / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------- search space


def test_search_space_parsing():
    base, search = split_search({"train": {"epochs": 3}, "search": {
        "train.lr": {"low": "1e-5", "high": 1e-2, "log": True},        # YAML reads 1e-5 as a string
        "train.epochs": {"low": 2, "high": 6},
        "train": {"weight_decay": {"low": 0, "high": 0.001}},          # nested keys are flattened
        "model.name": ["resnet18", "efficientnet_b0"],
        "augment.preset": {"choices": ["light", "default"]},
        "train.batch_size": {"low": 8, "high": 32, "step": 8}}})
    params = {p.key: p for p in parse_search(search, base)}
    assert base == {"train": {"epochs": 3}}
    lr = params["train.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1e-2, True)
    assert params["train.epochs"].kind == "int" and params["train.epochs"].high == 6
    assert params["train.weight_decay"].kind == "float"  # a float field stays float with int bounds
    assert params["model.name"].choices == ("resnet18", "efficientnet_b0")
    assert params["augment.preset"].kind == "categorical"
    assert params["train.batch_size"].grid_values() == [8, 16, 24, 32]


@pytest.mark.parametrize("search, message", [
    ({"train.lrr": {"low": 0.1, "high": 1}}, "Did you mean 'train.lr'"),
    ({"trian.lr": {"low": 0.1, "high": 1}}, "Did you mean 'train'"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "low (0.1) is greater than high (0.01)"),
    ({"augment.preset": []}, "choice list is empty"),
    ({"augment.preset": ["light", "heavy"]}, "choice 'heavy' is rejected by the config schema"),
    ({"train.epochs": {"low": 0, "high": 3}}, "low 0 is rejected by the config schema"),
    ({"model.dropout": {"low": 0.1, "high": 1.5}}, "high 1.5 is rejected"),
    ({"train.lr": {"low": 0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"train.lr": {"lo": 0.1, "high": 1}}, "Did you mean 'low'"),
    ({"train.lr": "fast"}, "expected a range"),
    ({"train": {"lr": {"low": 0.1}}}, "needs both low and high"),
    ({"output.dir": ["a", "b"]}, "cannot be searched"),
    ({"train.epochs": {"low": 1.5, "high": 3}}, "whole-number key"),
])
def test_search_space_errors(search, message):
    base, search = split_search({"search": search})
    with pytest.raises(PodiumError) as err:
        parse_search(search, base)
    assert message in str(err.value)


def test_missing_search_section_and_grid_over_a_range_fail_before_any_trial(tmp_path):
    with pytest.raises(PodiumError, match="no `search:` section"):
        prepare_settings({"train": {"lr": 0.1}}, trials=2, root=tmp_path)
    with pytest.raises(PodiumError, match="grid sampler needs a list"):
        prepare_settings({"search": {"train.lr": {"low": 0.01, "high": 0.1}}}, trials=2, root=tmp_path, sampler="grid")
    with pytest.raises(PodiumError, match="invalid config"):  # the base config is checked before the search
        prepare_settings({"train": {"epoch": 3}, "search": {"train.lr": [0.1]}}, trials=2, root=tmp_path)
    assert not (tmp_path / "exp").exists()


def test_missing_monitor_is_an_error_not_a_warning():
    from podium.tuning.pruning import MonitorMissing, TrialReporter

    class Trainer:
        sanity_checking, current_epoch, callback_metrics = False, 0, {"val_loss": 1.0}

    with pytest.raises(MonitorMissing, match="'val_f1' was not logged.*val_loss"):
        TrialReporter(trial=None, monitor="val_f1").on_validation_end(Trainer(), None)


def test_trials_table_shows_durations_as_the_cli_does():
    """The live/final trials table printed raw seconds ('seconds' 1235 for a 20-minute trial);
    it shows wall time like every other podium table ('20 min 34 s'), '-' for a running trial."""
    import datetime as dt
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from podium.tuning.outputs import trials_table

    study = optuna.create_study(direction="maximize")
    start = dt.datetime(2026, 1, 1)
    for value, seconds in ((0.5, 1234.5678), (0.7, 12.3)):
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=States.COMPLETE, value=value, datetime_start=start,
            datetime_complete=start + dt.timedelta(seconds=seconds), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={}))
    study.enqueue_trial({})
    study.ask()  # a running trial: no duration yet
    settings = SimpleNamespace(study_name="s", trials=3, direction="maximize", monitor="val_f1", params=[])
    out = io.StringIO()
    Console(file=out, width=120).print(trials_table(study, settings))
    lines = out.getvalue().splitlines()
    cells = {row[0]: row for row in ([c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│"))}
    assert "wall time" in out.getvalue() and "seconds" not in out.getvalue()
    assert (cells["0"][4], cells["1"][4], cells["2"][4]) == ("20 min 34 s", "12 s", "-")  # was 1235, 12.3, ''


# ---------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def study3(tmp_path_factory):
    """A 3-trial study through the CLI: tune.yaml -> studies/lr/trial_0..2."""
    tmp = tmp_path_factory.mktemp("tune")
    data = make_folder(tmp / "data")
    raw = tune_raw(tmp, data, {"train.lr": {"low": "1e-3", "high": 0.2, "log": True},
                               "augment.preset": ["none", "light"]})
    cfg = write_yaml(tmp / "tune.yaml", raw)
    root = tmp / "studies"
    assert main(["tune", str(cfg), "--trials", "3", "--study", "lr", "--dir", str(root), "--quiet"]) == 0
    return tmp, cfg, root


def test_study_writes_trials_table_plots_and_a_retrainable_best_config(study3):
    tmp, _, root = study3
    study_dir = root / "lr"
    trials = pd.read_csv(study_dir / "trials.csv")
    assert list(trials["number"]) == [0, 1, 2] and set(trials["state"]) == {"COMPLETE"}
    assert {"value", "duration_s", "epochs_run", "train.lr", "augment.preset", "run_dir"} <= set(trials.columns)
    assert list(trials["epochs_run"]) == [1, 1, 1]
    best_number = int(trials.loc[trials["value"].idxmax(), "number"])
    for n in range(3):
        run = study_dir / f"trial_{n}"
        assert (run / "summary.json").is_file() and (run / "metrics.csv").is_file()
        # tune.keep_best=1 (default): only the best trial keeps its weights, the others' go as they finish
        assert bool(list(run.rglob("*.ckpt"))) == (n == best_number), (n, best_number)
    ckpt_bytes = sum(p.stat().st_size for p in study_dir.rglob("*.ckpt"))
    one_run = sum(p.stat().st_size for p in (study_dir / f"trial_{best_number}").rglob("*.ckpt"))
    assert ckpt_bytes == one_run > 0
    page = (study_dir / "report.html").read_text()
    assert page.count("plotly.js v") >= 1 and page.count("Plotly.newPlot") >= 3  # plotly embedded: works offline
    assert "Optimization history" in page and "Intermediate values" in page
    assert "These importances rest on 3 completed trials: too few" in page

    best = trials.loc[trials["value"].idxmax()]
    info = json.loads((study_dir / "study.json").read_text())
    assert info["best_trial"] == int(best["number"]) and info["counts"] == {"COMPLETE": 3}
    best_yaml = yaml.safe_load((study_dir / "best_config.yaml").read_text())
    assert best_yaml["train"]["lr"] == pytest.approx(best["train.lr"])
    assert best_yaml["output"] == {**best_yaml["output"], "dir": str(tmp / "runs dir"), "name": "lr-best"}
    # retrained with `podium train`, the best config reproduces the best trial's value (same seed)
    assert main(["train", str(study_dir / "best_config.yaml"), "--quiet"]) == 0
    summary = json.loads((tmp / "runs dir" / "lr-best" / "summary.json").read_text())
    assert summary["best_metric"] == pytest.approx(best["value"], abs=1e-6)


def test_resumed_study_continues_numbering(study3):
    _, cfg, root = study3
    assert main(["tune", str(cfg), "--trials", "4", "--study", "lr", "--dir", str(root), "--quiet"]) == 0
    study = load(root, "lr")
    assert [t.number for t in study.trials] == [0, 1, 2, 3] and states(study) == ["COMPLETE"] * 4
    assert (root / "lr" / "trial_3" / "summary.json").is_file()
    # the study is full: a further call runs nothing
    assert main(["tune", str(cfg), "--trials", "4", "--study", "lr", "--dir", str(root), "--quiet"]) == 0
    assert len(load(root, "lr").trials) == 4


def test_clearly_bad_trial_is_pruned(tmp_path, image_folder):
    from podium import tune

    root = tmp_path / "studies"
    search = {"train.lr": {"low": 0.001, "high": 20.0, "log": True}}
    raw = tune_raw(tmp_path, image_folder, search, **{"train.epochs": 2, "train.optimizer": "adam"})
    settings = prepare_settings(raw, trials=2, study="prune", root=root)
    (root / "prune").mkdir(parents=True)
    study = optuna.create_study(study_name="prune", storage=settings.storage_url, direction="maximize")
    study.enqueue_trial({"train.lr": 0.01})
    study.enqueue_trial({"train.lr": 10.0})
    result = tune(raw, trials=2, study="prune", root=root, prune_startup=1, log=lambda m: None)
    trials = pd.read_csv(result.trials_csv)
    assert list(trials["state"]) == ["COMPLETE", "PRUNED"], trials
    assert list(trials["epochs_run"]) == [2, 1]  # the pruned run stopped after its first epoch
    assert result.best_trial == 0
    assert (root / "prune" / "trial_1" / "summary.json").is_file()  # a pruned trial is still a whole run


def test_trial_that_raises_is_failed_with_its_error_and_the_study_goes_on(tmp_path, image_folder, monkeypatch):
    import podium.model.training as training
    from podium import tune

    real_train = training.train

    def train_or_run_out_of_memory(cfg, **kwargs):
        if cfg.train.lr > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(training, "train", train_or_run_out_of_memory)
    root = tmp_path / "studies"
    raw = tune_raw(tmp_path, image_folder, {"train.lr": {"low": 0.01, "high": 20.0, "log": True}})
    settings = prepare_settings(raw, trials=1, study="oom", root=root)
    (root / "oom").mkdir(parents=True)
    optuna.create_study(study_name="oom", storage=settings.storage_url, direction="maximize").enqueue_trial(
        {"train.lr": 10.0})
    result = tune(raw, trials=1, study="oom", root=root, log=lambda m: None)
    trials = pd.read_csv(result.trials_csv)
    assert list(trials["state"]) == ["FAIL", "COMPLETE"]
    assert "out of memory" in trials["error"][0] and result.best_trial == 1


def test_cv_objective_on_a_journal_file(tmp_path, image_folder):
    from podium import tune

    journal = tmp_path / "shared fs" / "study.journal"
    raw = tune_raw(tmp_path, image_folder, {"augment.preset": ["none", "light"]})
    result = tune(raw, trials=1, folds=2, study="cv", root=tmp_path / "studies", storage=str(journal),
                  log=lambda m: None)
    assert journal.is_file() and result.counts == {"COMPLETE": 1}
    cv_summary = json.loads((tmp_path / "studies" / "cv" / "trial_0" / "cv_summary.json").read_text())
    assert result.best_value == pytest.approx(cv_summary["cv_macro_f1"])
    assert pd.read_csv(result.trials_csv)["epochs_run"][0] == 2  # 1 epoch x 2 folds


def test_journal_trial_of_a_killed_worker_is_failed_and_retried(tmp_path, image_folder):
    """A journal file has no heartbeats: before, a RUNNING trial left by a kill -9'd worker kept the
    study at {'RUNNING': 1} forever. Its recorded PID is gone, so a re-run fails it and runs it again."""
    import socket

    from podium import tune
    from podium.tuning.study import open_study

    journal = tmp_path / "study.journal"
    raw = tune_raw(tmp_path, image_folder, {"augment.preset": ["none", "light"]})
    settings = prepare_settings(raw, trials=1, study="dead", root=tmp_path / "studies", storage=str(journal))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = open_study(settings).ask()  # what the killed worker left: a RUNNING trial with its PID
    orphan.suggest_categorical("augment.preset", ["none", "light"])
    orphan.set_user_attr("worker_pid", dead.pid)
    orphan.set_user_attr("worker_host", socket.gethostname())
    result = tune(raw, trials=1, study="dead", root=tmp_path / "studies", storage=str(journal), log=lambda m: None)
    study = optuna.load_study(study_name="dead", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert states(study) == ["FAIL", "COMPLETE"] and result.counts == {"COMPLETE": 1, "FAIL": 1}
    assert "is gone" in study.trials[0].user_attrs["error"]
    assert retry_callback_class().retried_trial_number(study.trials[1]) == 0
    assert study.trials[1].params == study.trials[0].params


# ---------------------------------------------------------------- several processes


def tune_command(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "podium", "tune", str(cfg), "--quiet", *args]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("PODIUM_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PODIUM_TEST_POSTGRES_URL is not set; .ci/run starts a throw-away PostgreSQL server and sets it")
    try:
        import sqlalchemy

        sqlalchemy.create_engine(url).connect().close()
    except Exception as exc:
        pytest.skip(f"PostgreSQL at PODIUM_TEST_POSTGRES_URL is unreachable: {exc}")
    return url


@pytest.mark.slow
def test_two_processes_on_postgresql_complete_exactly_n_trials(tmp_path, image_folder, postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = write_yaml(tmp_path / "tune.yaml", tune_raw(tmp_path, image_folder, {
        "train.lr": {"low": 0.01, "high": 0.2, "log": True}, "augment.preset": ["none", "light"]}))
    args = ["--trials", "3", "--study", name, "--storage", postgres_url, "--heartbeat", "2"]
    procs = [subprocess.Popen(tune_command(cfg, *args, "--dir", str(tmp_path / f"machine{i}")), env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name=name, storage=postgres_url)
    complete = [t for t in study.trials if t.state == States.COMPLETE]
    assert len(complete) == 3, states(study)
    assert not [t for t in study.trials if t.state in (States.RUNNING, States.WAITING)]
    # every complete trial is one run folder, on one of the two "machines"; none twice, none missing
    folders = sorted(p.name for i in range(2) for p in (tmp_path / f"machine{i}" / name).glob("trial_*")
                     if (p / "summary.json").is_file())
    assert folders == sorted(f"trial_{t.number}" for t in complete)
    assert len({t.user_attrs["worker_pid"] for t in complete}) == 2, "both processes should have run trials"


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried_and_the_study_completes(tmp_path, image_folder):
    from podium import tune

    root = tmp_path / "studies"
    raw = tune_raw(tmp_path, image_folder, {"train.lr": {"low": 0.01, "high": 0.2, "log": True}},
                   **{"train.epochs": 2})
    cfg = write_yaml(tmp_path / "tune.yaml", raw)
    worker = subprocess.Popen(tune_command(cfg, "--trials", "2", "--study", "kill", "--dir", str(root),
                                           "--heartbeat", "1"), env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (root / "kill" / "trial_0" / "split.csv").is_file():  # the trial is training
            assert worker.poll() is None and time.time() < deadline, "the worker never started training"
            time.sleep(0.2)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert states(load(root, "kill")) == ["RUNNING"]  # what a dead worker leaves behind
    time.sleep(2.5)  # > grace period (2 x heartbeat): its heartbeat is now stale
    result = tune(cfg, trials=2, study="kill", root=root, heartbeat=1, log=lambda m: None)
    study = load(root, "kill")
    assert states(study)[0] == "FAIL" and states(study).count("COMPLETE") == 2, states(study)
    retried_from = retry_callback_class().retried_trial_number
    retries = [t for t in study.trials if retried_from(t) == 0]
    assert len(retries) == 1 and retries[0].state == States.COMPLETE
    assert retries[0].params == study.trials[0].params  # the same trial, run again
    assert result.counts == {"COMPLETE": 2, "FAIL": 1}


def test_readme_tune_example_is_a_valid_search(tmp_path):
    text = (REPO / "README.md").read_text().split("## Hyper-parameter search", 1)[1]
    example = yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])
    settings = prepare_settings(example, trials=20, root=tmp_path)
    assert settings.study_dir == tmp_path / "lr-search" and len(settings.params) == 4


def test_keep_best_keeps_the_best_trials_checkpoints_and_leaves_running_trials_alone(tmp_path):
    from podium.tuning.study import prune_checkpoints

    study = optuna.create_study(direction="maximize")
    for number, (state, value) in enumerate([(States.COMPLETE, 0.5), (States.COMPLETE, 0.9), (States.PRUNED, None),
                                             (States.COMPLETE, 0.7), (States.FAIL, None), (States.RUNNING, None)]):
        run = tmp_path / f"trial_{number}"
        (run / "epochs").mkdir(parents=True)
        for name in ("best.ckpt", "last.ckpt", "epochs/epoch000.ckpt", "metrics.csv"):
            (run / name).write_bytes(b"x")
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs={"run_dir": str(run)}))
    prune_checkpoints(study, keep_best=2, direction="maximize")
    with_weights = sorted(int(p.name.split("_")[1]) for p in tmp_path.iterdir() if list(p.rglob("*.ckpt")))
    assert with_weights == [1, 3, 5]  # the two best complete trials, and the running one untouched
    assert all((tmp_path / f"trial_{n}" / "metrics.csv").is_file() for n in range(6))
    prune_checkpoints(study, keep_best=0, direction="maximize")
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.ckpt")} == {"trial_5"}
