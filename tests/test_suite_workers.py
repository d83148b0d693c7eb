"""Suite-level workers (`dmlbench worker --suite NAME --storage URL`) on a 2-study suite, on a
JournalStorage file and on PostgreSQL (DMLBENCH_TEST_POSTGRES_URL, set by .ci/run; skipped
without it): exactly the planned trials and reproductions, none twice, one worker killed with
SIGKILL mid-reproduction; the work-item rules on their own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dmlbench.protocols import mlrc as S
from dmlbench.protocols.mlrc import items as I
from tests.conftest import ROOT, TINY_SUITE_CONFIG

POSTGRES_ENV = "DMLBENCH_TEST_POSTGRES_URL"


@pytest.fixture(params=["journal", "postgres"])
def storage_url(request, tmp_path):
    if request.param == "journal":
        return f"journal://{tmp_path / 'studies.log'}"
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    return url


def write_suite(tmp_path, n_trials: int = 2, reproductions: int = 2, epochs: int = 2) -> str:
    """A 2-study MLRC suite of tiny fits, its suite and run names unique."""
    path = tmp_path / "suite.yaml"
    tag = uuid.uuid4().hex[:8]   # study names of their own on a PostgreSQL server kept between runs
    path.write_text(yaml.safe_dump({
        "name": f"tiny-{tag}", "protocol": "mlrc",
        "config": {**TINY_SUITE_CONFIG, "train": {**TINY_SUITE_CONFIG["train"],
                                                  "epochs": epochs, "eval_every": 1}},
        "search": {"n_trials": n_trials, "reproductions": reproductions, "sampler": "random",
                   "space": {"loss_lr": ["log", 0.001, 0.1]}, "heartbeat_interval": 1,
                   "grace_period": 6},
        "runs": [{"method": "normsoftmax", "name": f"nsm-{tag}"},
                 {"method": "ms+miner", "name": f"ms-{tag}",
                  "space": {"base": 0.5, "epsilon": 0.1, "beta": 50.0}}]}))
    return str(path)


def start_worker(suite: str, url: str, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmlbench.bench.cli", "worker", "--suite",
                             suite, "--storage", url, "--out", str(out), "--threads", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def suite_studies(suite: str, url: str, out):
    from dmlbench.bench.suite.runner import prepare

    _, _, _, studies, mout = prepare(suite, [], str(out), search={"storage": url})
    st = S.open_storage(url)
    return [(ps, S.load_study(ps.study, st), S.load_study(I.final_study_name(ps.study), st))
            for ps in studies], mout


def check_exact(suite: str, url: str, out, n_trials: int, reps: int) -> dict:
    """Every study: n_trials complete search trials (no parameter set run twice but a dead
    trial's retry), every reproduction item complete exactly once, its record written once
    for the best trial's parameters, the report marked. Returns {pid: items completed}."""
    by_worker: dict[str, int] = {}
    studies, mout = suite_studies(suite, url, out)
    assert len(studies) == 2
    for ps, study, final in studies:
        trials = study.get_trials()
        assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        ran = [t for t in trials if "fold_values" in t.user_attrs]
        keys = [json.dumps(t.params, sort_keys=True) for t in ran
                if "failed_trial" not in t.system_attrs]
        assert len(keys) == len(set(keys))
        planned = I.final_items(reps, 4)   # 4 fold items per reproduction, then the reproduction
        table = I.item_table(final, planned)
        assert sorted(table.done) == sorted(planned) and not table.open
        assert not [t for t in final.get_trials() if t.state == TrialState.WAITING]
        complete = [t for t in final.get_trials() if t.state == TrialState.COMPLETE]
        assert len(complete) == len(planned)   # no item completed twice, nothing else completed
        for t in complete:
            pid = t.user_attrs["worker"].rsplit(":", 1)[1]
            by_worker[pid] = by_worker.get(pid, 0) + 1
        items = [t for t in complete if "/fold-" not in t.user_attrs["item"]]
        for t in final.get_trials():       # a skipped trial never ran its item
            if "skipped" in t.user_attrs:
                assert t.state == TrialState.FAIL and "worker" not in t.user_attrs
        best = {**ps.cfg["method"]["params"], **study.best_trial.params}
        for t in items:
            rec = json.loads((mout / ps.study / "final" / t.user_attrs["item"] / "record.json")
                             .read_text())
            assert rec["status"] == "completed" and len(rec["mlrc"]["folds"]) == 4
            assert rec["mlrc"]["best_trial"] == study.best_trial.number
            assert all(rec["mlrc"]["best_params"][k] == v for k, v in study.best_trial.params
                       .items()) and best
            assert t.value == pytest.approx(
                rec["mlrc"]["concatenated"]["metrics"]["mean_average_precision_at_r"])
            folds = {f.user_attrs["item"]: f.value for f in complete}
            assert [folds[f"{t.user_attrs['item']}/fold-{p}"] for p in range(4)] == [
                pytest.approx(f["test"]["mean_average_precision_at_r"])
                for f in rec["mlrc"]["folds"]]
        assert I.REPORT_ATTR in final.user_attrs
        assert (mout / ps.study / "importance" / "importance.md").exists()
    assert (mout / "table.md").exists()
    return by_worker


def test_item_rules():
    """Duplicates of an item are skipped, a retry of a failed one runs; enqueueing is once."""
    study = optuna.create_study(direction="maximize")
    final = I.final_study(study)
    assert I.ensure_items(final, ["rep-0", "rep-1"]) == 2
    assert I.ensure_items(final, ["rep-0", "rep-1"]) == 0
    final.enqueue_trial({}, user_attrs={I.ITEM_ATTR: "rep-0"})   # a racing enqueue
    ran = []
    assert I.take_item(final, lambda item: ran.append(item) or 1.0, log=lambda s: None) == "rep-0"
    assert I.take_item(final, lambda item: ran.append(item) or 2.0, log=lambda s: None) == "rep-1"
    # the duplicate rep-0 is popped next and closed without running
    assert I.take_item(final, lambda item: ran.append(item) or 3.0, log=lambda s: None) is None
    assert ran == ["rep-0", "rep-1"]
    trials = final.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.FAIL]
    assert trials[2].user_attrs["skipped"] == "item rep-0 is taken by an earlier trial"
    # nothing waiting: the fresh trial Optuna creates is closed as skipped
    assert I.take_item(final, lambda item: 1.0, log=lambda s: None) is None
    table = I.item_table(final, ["rep-0", "rep-1"])
    assert sorted(table.done) == ["rep-0", "rep-1"] and not table.open
    assert table.done["rep-1"].value == 2.0
    # an item whose every trial failed is enqueued again; one retried is not a duplicate
    assert not I.is_duplicate(trials + [trials[0]], 5, "rep-9")
    assert I.is_duplicate(trials, 9, "rep-0") and not I.is_duplicate(trials, 0, "rep-0")


def test_three_suite_workers_one_killed_mid_reproduction(storage_url, tmp_path):
    out = tmp_path / "out"
    suite = write_suite(tmp_path, n_trials=2, reproductions=2, epochs=3)
    procs = [start_worker(suite, storage_url, out) for _ in range(3)]
    victim = None
    deadline = time.monotonic() + 400
    try:
        while victim is None:
            assert time.monotonic() < deadline, "no worker reached the middle of a reproduction"
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:]
                                                           for p in procs if p.poll() is not None]
            try:
                studies, mout = suite_studies(suite, storage_url, out)
            except Exception:   # studies not created yet
                time.sleep(0.2)
                continue
            for ps, _, final in studies:
                for t in final.get_trials():
                    pid = int(t.user_attrs.get("worker", "x:0").rsplit(":", 1)[1])
                    rep, _, fold = t.user_attrs.get("item", "?").partition("/fold-")
                    rdir = mout / ps.study / "final" / rep
                    done = sorted(rdir.glob("fold-*/test-embeddings.npz"))
                    if (t.state == TrialState.RUNNING and pid and fold and done
                            and not (rdir / f"fold-{fold}" / "test-embeddings.npz").exists()):
                        victim = next(p for p in procs if p.pid == pid)
                        os.kill(pid, signal.SIGKILL)   # mid-fold, another fold of it finished
                        victim.wait()
                        kept = done[0].stat().st_mtime_ns
                        # the item may have completed between the look and the kill: then the
                        # kill hit the worker elsewhere, and only the exactness checks apply
                        now = final.get_trials()[t.number].state
                        dead = (ps.study, t.number, t.user_attrs["item"], done[0],
                                now == TrialState.RUNNING)
                        break
                if victim is not None:
                    break
            time.sleep(0.1)
        outs = [finish(p) for p in procs if p is not victim]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all("suite worker done" in o for o in outs)
    check_exact(suite, storage_url, out, n_trials=2, reps=2)
    studies, _ = suite_studies(suite, storage_url, out)
    final = next(f for ps, _, f in studies if ps.study == dead[0])
    trials = final.get_trials()
    if not dead[4]:
        return
    assert trials[dead[1]].state == TrialState.FAIL          # the killed worker's item
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead[1]]
    assert len(retry) == 1 and retry[0].user_attrs["item"] == dead[2]
    done = [t for t in trials if t.user_attrs.get("item") == dead[2]
            and t.state == TrialState.COMPLETE]
    assert len(done) == 1          # the killed item was finished once, by its retry or by the
    # copy a worker re-enqueued first; the other copy was then taken and skipped, never run
    assert retry[0].state == TrialState.COMPLETE or (
        retry[0].state == TrialState.FAIL and "skipped" in retry[0].user_attrs
        and "worker" not in retry[0].user_attrs)
    # the fold finished before the kill was used as it was, not fitted again
    assert dead[3].stat().st_mtime_ns == kept


@pytest.mark.slow
def test_suite_command_and_a_suite_worker_share_one_storage(tmp_path, capsys):
    """`dmlbench suite NAME --storage URL` and `dmlbench worker --suite NAME` cooperate: the
    same study names, and together exactly the planned trials and reproductions."""
    from dmlbench.bench.cli import main

    out = tmp_path / "out"
    suite = write_suite(tmp_path, n_trials=2, reproductions=2, epochs=1)
    url = f"journal://{tmp_path / 'studies.log'}"
    worker = start_worker(suite, url, out)
    try:
        assert main(["suite", suite, "--storage", url, "--out", str(out), "--threads", "1"]) == 0
        printed = finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "suite worker done" in printed
    check_exact(suite, url, out, n_trials=2, reps=2)
    assert len(S.list_study_names(S.open_storage(url))) == 2


def test_a_crashing_item_is_retried_three_times_then_left_failed():
    final = I.final_study(optuna.create_study(direction="maximize"))

    def crash(item):
        raise RuntimeError("boom")

    enqueued = []
    for _ in range(4):
        enqueued.append(I.ensure_items(final, ["rep-0"]))
        if enqueued[-1]:
            with pytest.raises(RuntimeError, match="boom"):
                I.take_item(final, crash, log=lambda s: None)
    assert enqueued == [1, 1, 1, 0]
    table = I.item_table(final, ["rep-0"])
    assert table.missing == {"rep-0"} and not table.done
    assert [t.state for t in final.get_trials()] == [TrialState.FAIL] * 3


def test_copies_left_waiting_after_their_item_completed_are_skipped_never_run():
    """A dead worker's retry and a worker's re-enqueue can both queue one item: the copy left
    waiting once the item is done is taken and skipped, so no trial waits forever."""
    final = I.final_study(optuna.create_study(direction="maximize"))
    I.ensure_items(final, ["rep-0"])
    assert I.take_item(final, lambda item: 1.0, log=lambda s: None) == "rep-0"
    final.enqueue_trial({}, user_attrs={I.ITEM_ATTR: "rep-0"})   # the second copy
    final.enqueue_trial({}, user_attrs={I.ITEM_ATTR: "rep-0"})   # and a third
    assert I.skip_leftover_copies(final, log=lambda s: None) == 2
    trials = final.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert all("skipped" in t.user_attrs and "worker" not in t.user_attrs for t in trials[1:])
    assert I.skip_leftover_copies(final, log=lambda s: None) == 0
