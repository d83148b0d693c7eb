"""The MLRC protocol: study identity, search space, trials over 4 folds, final evaluation,
records, resume, failures, pruning, samplers, storage errors (one process; the multi-process
cases are in test_workers.py)."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from dmlbench.bench.cli import main
from dmlbench.bench.config import load_config
from dmlbench.bench.data.loading import ImageSource
from dmlbench.bench.errors import UserError
from dmlbench.bench.evaluate import compute_metrics, l2_normalize
from dmlbench.bench.train import embed_split, fit
from dmlbench.protocols import mlrc as S
from dmlbench.bench.models import build_model
from dmlbench.protocols.mlrc import (FINAL_METRICS, MAP_R, FoldData, SearchOptions, build_settings,
                            fold_config, run_mlrc, run_worker, search_space)
from dmlbench.results.tables import load_runs
from tests.conftest import TINY

FAST = [*TINY, "train.epochs=2", "train.eval_every=1"]


def _cfg(*extra: str) -> dict:
    return load_config(overrides=[*FAST, *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_study_name_is_deterministic_and_defined_by_the_experiment(tmp_path):
    cfg = _cfg("method.name=normsoftmax")
    name, settings = build_settings(cfg, SearchOptions(n_trials=5), tmp_path)
    again, _ = build_settings(_cfg("method.name=normsoftmax", "train.progress=true",
                                   "train.threads=2"), SearchOptions(n_trials=7), tmp_path / "x")
    assert name == again and name.startswith("mlrc--glyphs--normsoftmax--")
    other, _ = build_settings(_cfg("method.name=normsoftmax", "train.lr=0.01"),
                              SearchOptions(n_trials=5), tmp_path)
    assert other != name
    assert build_settings(cfg, SearchOptions(sampler="random"), tmp_path)[0] != name
    # everything a worker needs is in the settings
    assert settings["budget"] == {"n_trials": 5, "reproductions": 3, "max_failed": 5}
    assert settings["experiment"]["space"] == {"loss_lr": ["log", 1e-6, 1.0],
                                               "temperature": ["log", 0.01, 100.0]}
    assert settings["config"]["dataset"]["options"] == {"num_classes": 20, "images_per_class": 8}
    json.dumps(settings)


def test_search_space_overrides_and_fixed_values():
    space, fixed = search_space("normsoftmax", {"loss_lr": 0.01},
                                {"temperature": ["log", 0.05, 1.0]})
    assert space == {"temperature": ["log", 0.05, 1.0]} and fixed == {"loss_lr": 0.01}
    space, fixed = search_space("ms+miner", {}, {"alpha": 2.0, "beta": ["int", 1, 60]})
    assert set(space) == {"beta", "base", "epsilon"} and fixed == {"alpha": 2.0}
    with pytest.raises(UserError, match="has no such parameter; its parameters are"):
        search_space("ms", {}, {"temperature": ["log", 0.1, 1.0]})
    with pytest.raises(UserError, match="is invalid"):
        search_space("ms", {}, {"alpha": ["log", 0.0, 1.0]})
    with pytest.raises(UserError, match="unknown kind"):
        search_space("ms", {}, {"alpha": ["normal", 0.0, 1.0]})


def test_search_then_final_evaluation_numbers(tmp_path):
    cfg = _cfg("method.name=normsoftmax")
    out = tmp_path / "out"
    res = run_mlrc(cfg, SearchOptions(n_trials=2, reproductions=2), out, log=lambda s: None)
    assert res["status"] == "completed"
    st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
    study = S.load_study(res["study"], st)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    data = FoldData(
        __import__("dmlbench.bench.data", fromlist=["load_dataset"]).load_dataset(
            "glyphs", num_classes=20, images_per_class=8), 4)
    t0 = trials[0]
    vals = t0.user_attrs["fold_values"]
    assert len(vals) == 4 and t0.value == pytest.approx(np.mean(vals))
    assert t0.user_attrs["fold_sem"] == pytest.approx(np.std(vals, ddof=1) / 2)
    # fold 0 of trial 0, trained independently, gives the recorded value
    fcfg = fold_config(cfg, {**t0.params}, seed=0)
    tr, va = data.folds[0]
    ind = fit(fcfg, tr, va, selection_set="val")
    assert ind.best["metrics"][MAP_R] == pytest.approx(vals[0], abs=1e-12)
    assert ind.best["metrics"][MAP_R] == max(e["metrics"][MAP_R] for e in ind.evaluations)
    # records: one per reproduction, numbers recomputed from the kept fold models
    recs = sorted((out / res["study"] / "final").glob("rep-*/record.json"))
    assert len(recs) == 2
    rec = json.loads(recs[0].read_text())
    assert rec["protocol"] == "mlrc" and rec["status"] == "completed" and rec["seed"] == 1
    best = study.best_trial
    assert rec["mlrc"]["best_trial"] == best.number
    assert rec["mlrc"]["best_params"] == {**best.params}
    embs, per_fold = [], []
    for p in range(4):
        fdir = recs[0].parent / f"fold-{p}"
        assert not (fdir / "checkpoint.pt").exists() and (fdir / "best_model.pt").exists()
        src = ImageSource(data.test, torch.device("cpu"), image_size=32)
        model = build_model(rec["config"]["model"], src.channels)
        model.load_state_dict(torch.load(fdir / "best_model.pt", weights_only=True))
        e, lab = embed_split(model, src, 64)
        embs.append(e.numpy())
        per_fold.append(compute_metrics(e, lab, include=FINAL_METRICS, seed=1))
    conc = l2_normalize(np.concatenate([l2_normalize(e) for e in embs], axis=1))
    assert np.allclose(np.linalg.norm(conc, axis=1), 1, atol=1e-5)
    want = compute_metrics(conc, lab, include=FINAL_METRICS, seed=1)
    for k in FINAL_METRICS:
        assert rec["mlrc"]["concatenated"]["metrics"][k] == pytest.approx(want[k], abs=1e-6)
        assert rec["mlrc"]["separated"]["metrics"][k] == pytest.approx(
            np.mean([m[k] for m in per_fold]), abs=1e-6)
    assert rec["final"]["metrics"] == rec["mlrc"]["concatenated"]["metrics"]
    # the table reads one row per reproduction, from the concatenated metrics
    df = load_runs(out)
    assert len(df) == 2 and set(df["protocol"]) == {"mlrc"}
    assert df["precision_at_1"].tolist()[0] == pytest.approx(
        rec["mlrc"]["concatenated"]["metrics"]["precision_at_1"])
    # resume: the same command again runs nothing and rewrites nothing
    mtimes = [r.stat().st_mtime_ns for r in recs]
    again = run_mlrc(cfg, SearchOptions(n_trials=2, reproductions=2), out, log=lambda s: None)
    assert again["summary"].ran == [] and len(study.get_trials()) == 2
    assert [r.stat().st_mtime_ns for r in recs] == mtimes


def test_a_study_left_midway_is_continued(tmp_path):
    cfg = _cfg("method.name=ms")
    out = tmp_path / "out"
    opts = SearchOptions(n_trials=3, reproductions=1)
    name, settings = build_settings(cfg, opts, out)
    url = f"journal://{tmp_path / 's.log'}"
    st = S.open_storage(url)
    S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    first = run_worker(name, url, max_trials=1, log=lambda s: None)
    assert first.ran == [0]
    before = S.load_study(name, st).trials[0]
    res = run_mlrc(cfg, SearchOptions(n_trials=3, reproductions=1, storage=url), out,
                   log=lambda s: None)
    study = S.load_study(name, st)
    assert res["summary"].ran == [1, 2]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.trials[0].value == before.value and study.trials[0].params == before.params


def test_conflicting_settings_and_bad_storage_exit_2(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: {name: normsoftmax}\n")
    cfg = load_config(cfg_file, FAST)
    out = tmp_path / "out"
    out.mkdir()
    name, settings = build_settings(cfg, SearchOptions(n_trials=2), out)
    st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
    S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    code = main(["mlrc", str(cfg_file), *FAST, "--n-trials", "3", "--out", str(out)])
    assert code == 2
    err = _one_error_line(capsys)
    assert f"study {name!r}" in err and "budget.n_trials: stored 2, asked 3" in err
    # a named study that holds another experiment
    code = main(["mlrc", str(cfg_file), *FAST, "train.lr=0.01", "--n-trials", "2", "--study",
                 name, "--out", str(out)])
    assert code == 2 and "experiment.config.train.lr" in _one_error_line(capsys)
    assert len(S.load_study(name, st).trials) == 0
    for url, needle in [("postgresql://u:secret@127.0.0.1:1/db", "cannot open storage "
                         "postgresql://u:***@127.0.0.1:1/db"),
                        (f"journal://{tmp_path}/missing/x.log", "does not exist"),
                        ("nonsense", "cannot tell what storage")]:
        assert main(["worker", name, "--storage", url]) == 2
        assert needle in _one_error_line(capsys)
    assert main(["worker", "nope", "--storage", f"sqlite:///{out / 'studies.db'}"]) == 2
    assert f"no study named 'nope'" in _one_error_line(capsys)


class _NanIf(torch.nn.Module):
    """Finite loss unless `explode` >= 0.5: then NaN from the first step."""

    def __init__(self, explode: float) -> None:
        super().__init__()
        self.explode = explode

    def forward(self, embeddings, labels):
        value = embeddings.pow(2).mean()
        return value * float("nan") if self.explode >= 0.5 else value


def _register_nan_method() -> str:
    from dmlbench.methods.registry import _METHODS, register_method

    name = "test-nan-if-explode"
    if name not in _METHODS:
        register_method(name, defaults={"explode": 0.0},
                        search_space={"explode": ("float", 0.0, 1.0)}, m_per_class=4)(
            lambda c, d, explode: (_NanIf(explode), None))
    return name


def test_diverged_trial_fails_with_reason_and_study_goes_on(tmp_path):
    method = _register_nan_method()
    cfg = _cfg(f"method.name={method}")
    opts = SearchOptions(n_trials=2, reproductions=1, sampler="random",
                         space={"explode": ["float", 0.0, 0.5]})
    out = tmp_path / "out"
    out.mkdir()
    name, settings = build_settings(cfg, opts, out)
    st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    study.enqueue_trial({"explode": 0.5})
    lines: list[str] = []
    res = run_mlrc(cfg, opts, out, log=lines.append)
    trials = S.load_study(name, st).trials
    assert trials[0].state == TrialState.FAIL
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("fold 0 diverged: loss became nan")
    assert any("trial 0: FAILED (fold 0 diverged" in line for line in lines)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert res["status"] == "completed" and len(res["records"]) == 1


def test_failures_stop_the_study_at_max_failed(tmp_path):
    method = _register_nan_method()
    cfg = _cfg(f"method.name={method}")
    opts = SearchOptions(n_trials=2, reproductions=1, space={"explode": ["float", 0.6, 1.0]},
                         max_failed=2)
    res = run_mlrc(cfg, opts, tmp_path / "out", log=lambda s: None)
    assert res["status"] == "failed" and "2 trials failed" in res["message"]
    assert res["summary"].states == {"FAIL": 2} and res["records"] == []


class _PruneFromSecondTrial(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number >= 1


def test_pruned_trial_records_its_finished_folds(tmp_path, monkeypatch):
    monkeypatch.setattr(S.search, "make_pruner", lambda kind: _PruneFromSecondTrial()
                        if kind == "median" else optuna.pruners.NopPruner())
    cfg = _cfg("method.name=normsoftmax")
    res = run_mlrc(cfg, SearchOptions(n_trials=2, reproductions=1, pruner="median"),
                   tmp_path / "out", log=lambda s: None)
    st = S.open_storage(f"sqlite:///{tmp_path / 'out' / 'studies.db'}")
    trials = S.load_study(res["study"], st).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].user_attrs["pruned_after_folds"] == 1
    assert len(trials[1].user_attrs["fold_values"]) == 1
    # intermediate values: each evaluation (2 epochs per fold) at step fold * 2 + epoch
    assert sorted(trials[1].intermediate_values) == [1, 2]
    assert max(trials[1].intermediate_values.values()) == \
        pytest.approx(trials[1].user_attrs["fold_values"][0])
    assert sorted(trials[0].intermediate_values) == list(range(1, 9))


@pytest.mark.parametrize("kind", ["tpe", "gp", "random", "grid"])
def test_samplers_are_seeded_per_trial(kind):
    space = {"x": S.distribution(["float", -1.0, 1.0]), "n": S.distribution(["int", 1, 3]),
             "c": S.distribution(["categorical", ["a", "b"]])}

    def run(seed: int) -> list[dict]:
        sampler = S.PerTrialSeededSampler(kind, seed, space, grid_points=3)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: -(S.suggest(t, "x", space["x"]) - 0.3) ** 2
                       + S.suggest(t, "n", space["n"]) * (S.suggest(t, "c", space["c"]) == "a"),
                       n_trials=6)
        return [t.params for t in study.trials]

    a, b = run(0), run(0)
    assert a == b
    assert run(1) != a
    assert len({json.dumps(p, sort_keys=True) for p in a}) == 6  # no repeats
    if kind == "grid":
        assert S.PerTrialSeededSampler("grid", 0, space, 3).grid_size() == 3 * 3 * 2
        assert all(p["x"] in (-1.0, 0.0, 1.0) for p in a)


def test_grid_caps_n_trials(tmp_path):
    cfg = _cfg("method.name=normsoftmax")
    opts = SearchOptions(n_trials=50, sampler="grid", grid_points=2,
                         space={"loss_lr": 0.01, "temperature": ["log", 0.01, 1.0]})
    _, settings = build_settings(cfg, opts, tmp_path)
    assert settings["budget"]["n_trials"] == 2


def test_admission_counts_finished_running_and_queued():
    def frozen(number: int, state: TrialState):
        return optuna.trial.FrozenTrial(
            number=number, state=state, value=1.0 if state == TrialState.COMPLETE else None,
            values=None, datetime_start=None, datetime_complete=None, params={},
            distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
            trial_id=number)

    trials = [frozen(0, TrialState.COMPLETE), frozen(1, TrialState.FAIL),
              frozen(2, TrialState.RUNNING), frozen(3, TrialState.PRUNED),
              frozen(4, TrialState.RUNNING)]
    assert S.admitted(trials, 4, n_trials=4)          # 0, 2, 3 before it
    assert not S.admitted(trials, 4, n_trials=3)
    assert S.admitted(trials, 2, n_trials=2)          # only 0 before it
    trials.append(frozen(5, TrialState.WAITING))
    assert not S.admitted(trials, 6, n_trials=4)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_journal_trial_is_requeued_and_completed(tmp_path):
    """A RUNNING trial whose worker is gone (no heartbeat) is failed after the grace period,
    re-queued with its parameters and user attributes, and finished by a live worker."""
    cfg = _cfg("method.name=normsoftmax")
    opts = SearchOptions(n_trials=2, reproductions=1, heartbeat_interval=1, grace_period=2,
                         storage=f"journal://{tmp_path / 's.log'}")
    name, settings = build_settings(cfg, opts, tmp_path / "out")
    st = S.open_storage(opts.storage)
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    dead = study.ask()                       # a worker that died right after starting
    dead.suggest_float("loss_lr", 1e-6, 1.0, log=True)
    dead.suggest_float("temperature", 0.01, 100.0, log=True)
    dead.set_user_attr("fold_0", {"value": 0.5, "best_epoch": 1, "epochs_run": 2,
                                  "stopped_early": False, "fit_s": 0.0, "train_s": 0.0,
                                  "eval_s": 0.0})
    res = run_mlrc(cfg, opts, tmp_path / "out", log=lambda s: None)
    trials = S.load_study(name, st).trials
    assert trials[0].state == TrialState.FAIL and "fail_reason" not in trials[0].user_attrs
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and res["status"] == "completed"
    retry = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params
    # the fold finished before the worker died is kept, not retrained
    assert retry[0].user_attrs["fold_values"][0] == 0.5
    assert not (tmp_path / "out" / name / f"trial-{retry[0].number:04d}").exists()
    assert (tmp_path / "out" / name / "trial-0000" / "fold-1" / "result.json").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_interrupted_trial_is_requeued_on_restart(tmp_path):
    cfg = _cfg("method.name=normsoftmax")
    opts = SearchOptions(n_trials=1, reproductions=1)
    out = tmp_path / "out"
    out.mkdir()
    name, settings = build_settings(cfg, opts, out)
    st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    t = study.ask()
    t.suggest_float("loss_lr", 1e-6, 1.0, log=True)
    t.suggest_float("temperature", 0.01, 100.0, log=True)
    t.set_user_attr("interrupted", True)
    study.tell(t, state=TrialState.FAIL)
    res = run_mlrc(cfg, opts, out, log=lambda s: None)
    trials = S.load_study(name, st).trials
    assert res["summary"].requeued == [0]
    assert [x.state for x in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params


def test_mlrc_part_of_a_suite_writes_table_and_importance(tmp_path, capsys):
    import yaml

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "seeds": [0],
        "config": {"dataset": {"options": {"num_classes": 20, "images_per_class": 8}},
                   "model": {"width": 4, "embedding_size": 16},
                   "train": {"batch_size": 16, "epochs": 1, "progress": False, "threads": 1}},
        "runs": ["ms"],
        "mlrc": {"config": {"train": {"epochs": 2, "eval_every": 1}},
                 "search": {"n_trials": 3, "reproductions": 2, "sampler": "random",
                            "space": {"loss_lr": 0.01}},
                 "runs": [{"method": "normsoftmax"},
                          {"method": "ms+miner", "space": {"base": 0.5, "epsilon": 0.1,
                                                     "beta": 50.0}}]}}))
    out = tmp_path / "runs" / "tiny"
    assert main(["suite", str(suite), "--out", str(out), "--plan"]) == 0
    assert "2 MLRC studies" in capsys.readouterr().out
    assert main(["suite", str(suite), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    mout = tmp_path / "runs" / "tiny-mlrc"
    assert (out / "table.md").exists() and (mout / "table.md").exists()
    assert f"MLRC ({mout})" in printed and "importance report (mlrc--glyphs--ms+miner--" in printed
    table = (mout / "table.md").read_text()
    assert "95% CI" in table and "| normsoftmax | 2 |" in table and "| ms+miner | 2 |" in table
    reports = sorted(mout.glob("*/importance/importance.md"))
    assert len(reports) == 2 and all((r.parent / "marginals.png").exists() for r in reports)
    # `dmlbench importance` and `dmlbench studies` find the study on their own
    name = reports[0].parent.parent.name
    cwd = tmp_path
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(["importance", name, "--out", str(tmp_path / "imp")]) == 0
        assert main(["studies"]) == 0
    finally:
        os.chdir(old)
    printed = capsys.readouterr().out
    assert (tmp_path / "imp" / "history.png").exists() and "3 complete" in printed
    assert math.isfinite(json.loads(next(mout.rglob("rep-0/record.json")).read_text())[
        "mlrc"]["best_value"])


def test_worker_survives_its_trial_being_requeued_by_another(tmp_path):
    """A stalled worker whose trial another worker judged dead drops that run and goes on."""
    st = S.open_storage(f"journal://{tmp_path / 'j.log'}")
    study = optuna.create_study(storage=st.storage, direction="maximize")
    lines: list[str] = []

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:  # what fail_stale_trials does from another process
            st.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            trial.set_user_attr("fold_0", 1.0)
        return x

    summary = S.run_trials(study, objective, n_trials=2, max_failed=5, log=lines.append)
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert any("re-queued by another worker" in line for line in lines)
    assert summary.ran == [1, 2]


def test_worker_lines_go_to_the_dmlbench_logger_without_a_log(tmp_path, caplog):
    """Library code logs (no print): without `log`, the worker's lines are INFO records of the
    `dmlbench.protocols.mlrc.worker` logger, and nothing reaches stdout."""
    import logging

    st = S.open_storage(f"journal://{tmp_path / 'j.log'}")
    study = optuna.create_study(storage=st.storage, direction="maximize")

    def objective(trial):
        if trial.number == 0:  # what fail_stale_trials does from another process
            st.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return trial.suggest_float("x", 0.0, 1.0)

    with caplog.at_level(logging.INFO, logger="dmlbench"):
        S.run_trials(study, objective, n_trials=1, max_failed=5)
    said = [(r.name, r.levelno) for r in caplog.records if "re-queued by another" in r.message]
    assert said == [("dmlbench.protocols.mlrc.worker", logging.INFO)]


def test_storage_module_loads_no_training_code():
    """`dmlbench studies` and URL checks import protocols.mlrc.storage: torch stays unloaded."""
    import subprocess
    import sys

    code = ("import sys, dmlbench.protocols.mlrc.storage as s; "
            "print('torch' in sys.modules, 'dmlbench.protocols.mlrc.run' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_mlrc_command_end_to_end(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method: {name: ms+miner}\n")
    out = tmp_path / "out"
    args = ["mlrc", str(cfg_file), *FAST, "--n-trials", "2", "--reproductions", "2",
            "--sampler", "random", "--space", "alpha=[float, 1.0, 3.0]", "--space", "beta=50",
            "--space", "base=0.5", "--space", "epsilon=0.1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| ms+miner | 2 |" in printed and "95% CI" in printed
    assert "importance report (mlrc--glyphs--ms+miner--" in printed
    st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
    (name,) = S.list_study_names(st)
    trials = S.load_study(name, st).trials
    assert [set(t.params) for t in trials] == [{"alpha"}, {"alpha"}]
    assert all(1.0 <= t.params["alpha"] <= 3.0 for t in trials)
    assert S.study_settings(S.load_study(name, st))["experiment"]["fixed"] == {
        "beta": 50, "base": 0.5, "epsilon": 0.1}


def test_changed_best_parameters_replace_a_reproduction_fold_by_fold_under_each_lock(tmp_path):
    # a reproduction made for parameters A, then the study's best trial changes to B while
    # another process still holds fold 1 (fitting it for A): B's reproduction refits fold 0,
    # waits for fold 1's lock, and only then replaces what is in fold 1
    import threading

    from dmlbench.bench.data import load_dataset
    from dmlbench.protocols.mlrc.final import FOLD_FILE, FOLD_KEY, FinalEvaluation
    from tests.test_concurrency import _holder

    cfg = _cfg("method.name=normsoftmax", "train.epochs=1")
    name, settings = build_settings(cfg, SearchOptions(reproductions=1), tmp_path)
    data = FoldData(load_dataset("glyphs", num_classes=20, images_per_class=8), 4)
    root = tmp_path / name / "final"

    def final(lr: float) -> FinalEvaluation:
        return FinalEvaluation(name, settings, 0, 0.5, {"loss_lr": lr, "temperature": 0.1},
                               data, root, log=lambda s: None)

    a = final(0.01).attempt(0, wait=True)
    assert a["mlrc"]["best_params"]["loss_lr"] == 0.01
    rdir = root / "rep-0"
    key_a = (rdir / "fold-1" / FOLD_KEY).read_text()
    sentinel = rdir / "fold-1" / "in-progress.txt"   # what the other process is writing
    holder = _holder(rdir / "fold-1", 600)
    try:
        sentinel.write_text("A")
        made: list = []
        thread = threading.Thread(target=lambda: made.append(final(0.02).attempt(0, wait=True)))
        thread.start()
        for _ in range(600):   # fold 0 refitted for B: the thread is now waiting for fold 1
            if (rdir / "fold-0" / FOLD_KEY).read_text() != key_a:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert not (rdir / "record.json").exists()   # A's record is gone: no longer the study's
        assert sentinel.read_text() == "A" and (rdir / "fold-1" / FOLD_FILE).exists()
        assert thread.is_alive()
    finally:
        holder.kill()
        holder.wait()
    thread.join(timeout=600)
    (b,) = made
    assert b["status"] == "completed" and b["mlrc"]["best_params"]["loss_lr"] == 0.02
    assert not sentinel.exists()   # fold 1 was emptied once its lock was free, then refitted
    keys = {(rdir / f"fold-{p}" / FOLD_KEY).read_text() for p in range(4)}
    assert len(keys) == 1 and keys != {key_a} and '"loss_lr": 0.02' in keys.pop()
    again = final(0.02).attempt(0, wait=True)   # done: kept
    assert again["run_id"] == b["run_id"] and again["mlrc"]["folds"] == b["mlrc"]["folds"]
