"""MLRC studies as optuna-dashboard shows them: per-epoch intermediate values of every fold,
flat per-fold user attributes, the importance report as study artifacts; served by a real
optuna-dashboard on 127.0.0.1; and pruning still decided between folds on running means."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from dmlbench.bench.config import load_config
from dmlbench.bench.suite import attach_importance_report
from dmlbench.protocols import mlrc as S
from dmlbench.protocols.mlrc import SearchOptions, run_mlrc
from dmlbench.results.importance import write_importance_report
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 3
FAST = [*TINY, f"train.epochs={EPOCHS}", "train.eval_every=1", "train.patience=0",
        "method.name=normsoftmax"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-trial study (early stopping: folds run 2 or 3 epochs), its importance
    report attached as artifacts."""
    out = tmp_path_factory.mktemp("mlrc")
    res = run_mlrc(load_config(overrides=FAST), SearchOptions(n_trials=2, reproductions=1),
                   out, log=lambda s: None)
    url = f"sqlite:///{out / 'studies.db'}"
    study = S.load_study(res["study"], S.open_storage(url))
    paths = write_importance_report(study, out / res["study"] / "importance")
    ids = attach_importance_report(study, paths, out / res["study"] / "artifacts")
    return out, url, res["study"], paths, ids


def _fold_results(out: Path, study_name: str, number: int) -> list[dict]:
    return [json.loads((out / study_name / f"trial-{number:04d}" / f"fold-{p}" /
                        "result.json").read_text())["result"] for p in range(4)]


def test_intermediate_values_are_every_evaluation_of_every_fold(finished):
    out, url, name, _, _ = finished
    trials = S.load_study(name, S.open_storage(url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        folds = _fold_results(out, name, t.number)
        expected = {p * EPOCHS + e: v for p, f in enumerate(folds) for e, v in f["curve"]}
        assert t.intermediate_values == pytest.approx(expected)
        for p, f in enumerate(folds):
            # a fold's curve: one value per epoch it ran; its best is the fold's value
            assert [e for e, _ in f["curve"]] == list(range(1, f["epochs_run"] + 1))
            assert max(v for _, v in f["curve"]) == f["value"] == t.user_attrs["fold_values"][p]
            assert dict(f["curve"])[f["best_epoch"]] == f["value"]
            assert t.user_attrs[f"fold_{p}_map_at_r"] == f["value"]
            assert t.user_attrs[f"fold_{p}_best_epoch"] == f["best_epoch"]
            assert t.user_attrs[f"fold_{p}_epochs_run"] == f["epochs_run"]
            assert t.user_attrs[f"fold_{p}_fit_s"] == f["fit_s"] > 0
            assert t.user_attrs[f"fold_{p}"] == f          # the nested attribute stays
        assert t.value == pytest.approx(np.mean([f["value"] for f in folds]))
    # early stopping (patience 0) ended some fold before its third epoch
    assert any(len(_fold_results(out, name, t.number)[p]["curve"]) < EPOCHS
               for t in trials for p in range(4))


def test_artifacts_are_attached_once(finished):
    out, url, name, paths, ids = finished
    study = S.load_study(name, S.open_storage(url))
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert sorted(m.filename for m in metas) == sorted(p.name for p in paths.values()) == \
        ["history.png", "importance.md", "importance.png", "marginals.png"]
    store = out / name / "artifacts"
    for m in metas:
        assert (store / m.artifact_id).read_bytes() == paths[
            {"importance.md": "markdown"}.get(m.filename, m.filename[:-4])].read_bytes()
    # a second attach (a re-run) rewrites in place: same ids, no duplicates
    again = attach_importance_report(study, paths, store)
    assert again == ids
    assert len(optuna.artifacts.get_all_artifact_meta(
        S.load_study(name, S.open_storage(url)))) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read()


def test_optuna_dashboard_serves_the_study(finished, tmp_path):
    pytest.importorskip("optuna_dashboard")
    exe = Path(sys.executable).with_name("optuna-dashboard")
    if not exe.exists():
        pytest.skip("optuna-dashboard's command is not installed beside this Python")
    out, url, name, paths, ids = finished
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port),
                             "--server", "wsgiref", "--artifact-dir",
                             str(out / name / "artifacts"), "--quiet"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("optuna-dashboard did not start: " +
                                         (tmp_path / "dashboard.log").read_text()[-2000:])
                time.sleep(0.3)
        sid = next(s["study_id"] for s in studies if s["study_name"] == name)
        detail = json.loads(_get(f"{base}/api/studies/{sid}"))
        stored = S.load_study(name, S.open_storage(url)).get_trials()
        assert detail["has_intermediate_values"] is True
        assert len(detail["trials"]) == len(stored) == 2
        for served, t in zip(sorted(detail["trials"], key=lambda x: x["number"]), stored):
            assert [(v["step"], v["value"]) for v in served["intermediate_values"]] == \
                sorted(t.intermediate_values.items())
            attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
            for p in range(4):
                assert float(attrs[f"fold_{p}_map_at_r"]) == t.user_attrs[f"fold_{p}_map_at_r"]
                assert int(attrs[f"fold_{p}_best_epoch"]) == t.user_attrs[f"fold_{p}_best_epoch"]
        union = {a["key"] for a in detail["union_user_attrs"]}
        assert {"fold_0_map_at_r", "fold_3_epochs_run", "fold_values"} <= union
        served_artifacts = {a["filename"]: a["artifact_id"] for a in detail["artifacts"]}
        assert served_artifacts == ids
        md = _get(f"{base}/artifacts/{sid}/{ids['importance.md']}")
        assert md == paths["markdown"].read_bytes()
        png = _get(f"{base}/artifacts/{sid}/{ids['history.png']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class _Recorder(optuna.pruners.BasePruner):
    """Records what the pruner is shown; prunes trial 2 when it first sees it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict, dict]] = []

    def prune(self, study, trial) -> bool:
        done = {t.number: dict(t.intermediate_values)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        self.calls.append((trial.number, dict(trial.intermediate_values), done))
        return trial.number == 2


def test_pruning_between_folds_on_running_means(tmp_path, monkeypatch):
    pruner = _Recorder()
    monkeypatch.setattr(S.search, "make_pruner", lambda kind: pruner if kind == "median"
                        else optuna.pruners.NopPruner())
    res = run_mlrc(load_config(overrides=FAST), SearchOptions(n_trials=3, reproductions=1,
                                                              pruner="median"),
                   tmp_path, log=lambda s: None)
    trials = S.load_study(res["study"], S.open_storage(
        f"sqlite:///{tmp_path / 'studies.db'}")).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    # asked after folds 0, 1, 2 of trials 0 and 1, after fold 0 of trial 2 (then pruned)
    asked = [(n, sorted(iv)) for n, iv, _ in pruner.calls]
    assert asked == [(0, [0]), (0, [0, 1]), (0, [0, 1, 2]), (1, [0]), (1, [0, 1]),
                     (1, [0, 1, 2]), (2, [0])]
    for number, iv, done in pruner.calls:
        vals = [t for t in trials if t.number == number][0].user_attrs["fold_values"]
        assert iv == pytest.approx({q: np.mean(vals[:q + 1]) for q in iv})
        for other, other_iv in done.items():
            fv = trials[other].user_attrs["fold_values"]
            assert other_iv == pytest.approx({q: np.mean(fv[:q + 1]) for q in range(4)})
    assert sorted(done) == [0, 1]                      # the last call saw both finished trials
    pruned = trials[2]
    assert pruned.user_attrs["pruned_after_folds"] == 1
    assert sorted(pruned.intermediate_values) == list(range(1, 1 + pruned.user_attrs[
        "fold_0_epochs_run"]))                          # fold 0's own curve, per epoch
    assert max(pruned.intermediate_values.values()) == pruned.user_attrs["fold_0_map_at_r"]


def test_median_pruner_decides_on_running_means(tmp_path):
    """The real MedianPruner (3 startup trials): every decision obeys its rule applied to
    running means over folds (best running mean so far < median of the finished trials'
    running means at that fold => pruned), checked from the stored fold values."""
    res = run_mlrc(load_config(overrides=FAST), SearchOptions(n_trials=5, reproductions=1,
                                                              pruner="median"),
                   tmp_path, log=lambda s: None)
    trials = S.load_study(res["study"], S.open_storage(
        f"sqlite:///{tmp_path / 'studies.db'}")).get_trials()
    finished: list[list[float]] = []
    checked = 0
    for t in trials:
        vals = t.user_attrs["fold_values"]
        running = [float(np.mean(vals[:q + 1])) for q in range(len(vals))]
        last = len(vals) - 1 if t.state == TrialState.PRUNED else 3
        for q in range(min(last + 1, 3)):
            if len(finished) < 3:
                continue
            median = float(np.median([f[q] for f in finished]))
            pruned_here = max(running[:q + 1]) < median
            assert pruned_here == (t.state == TrialState.PRUNED and q == last)
            checked += 1
        if t.state == TrialState.COMPLETE:
            finished.append(running)
    assert len(finished) >= 3 and checked >= 1
