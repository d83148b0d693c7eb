"""Several `dmlbench worker` processes on one study, on a JournalStorage file and on PostgreSQL
(DMLBENCH_TEST_POSTGRES_URL, which .ci/run sets; without it the PostgreSQL cases are skipped):
exact trial counts, no duplicates, then the reproduction items taken once, a worker killed
with SIGKILL mid-trial, unreachable storage. Suite-level workers: tests/test_suite_workers.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from optuna.trial import TrialState

from dmlbench.bench.config import load_config
from dmlbench.protocols import mlrc as S
from dmlbench.protocols.mlrc import SearchOptions, build_settings
from tests.conftest import ROOT, TINY

POSTGRES_ENV = "DMLBENCH_TEST_POSTGRES_URL"
HEARTBEAT, GRACE = 1, 6


@pytest.fixture(params=["journal", "postgres"])
def storage_url(request, tmp_path):
    if request.param == "journal":
        yield f"journal://{tmp_path / 'studies.log'}"
        return
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    yield url


def _create(url: str, out, n_trials: int, *extra: str) -> str:
    cfg = load_config(overrides=[*TINY, "train.epochs=2", "train.eval_every=1",
                                 "method.name=normsoftmax", *extra])
    opts = SearchOptions(n_trials=n_trials, reproductions=1, heartbeat_interval=HEARTBEAT,
                         grace_period=GRACE, study=f"test-workers-{uuid.uuid4().hex[:10]}")
    name, settings = build_settings(cfg, opts, out)
    S.create_or_check_study(name, S.open_storage(url), settings, checked=("experiment", "budget"))
    return name


def _worker(name: str, url: str, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmlbench.bench.cli", "worker", name, "--storage", url,
                             "--out", str(out), "--threads", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _trials(name: str, url: str):
    return S.load_study(name, S.open_storage(url)).get_trials()


def _check_exact(trials, n: int) -> list:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # no parameter set ran twice, except a re-queued retry of a dead trial
    seen = {}
    for t in trials:
        key = json.dumps(t.params, sort_keys=True)
        if key in seen and t.params:
            first = seen[key]
            assert t.system_attrs.get("failed_trial") == first.number, (t.number, first.number)
            assert first.state == TrialState.FAIL
        seen.setdefault(key, t)
    assert all(len(t.user_attrs["fold_values"]) == 4 for t in done)
    return done


def test_two_workers_share_a_study(storage_url, tmp_path):
    name = _create(storage_url, tmp_path / "out", 4)
    procs = [_worker(name, storage_url, tmp_path / "out") for _ in range(2)]
    outs = [_finish(p) for p in procs]
    trials = _trials(name, storage_url)
    done = _check_exact(trials, 4)
    # a trial that lost the race for the last slot is closed as skipped, never run
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "skipped" in t.user_attrs and "fold_0" not in t.user_attrs
    assert all("worker done" in o for o in outs)
    ran = sum(int(o.split("ran ")[1].split()[0]) for o in outs)
    assert ran == len(done)
    # then the workers take the study's final items (4 folds, then the reproduction), once each
    final = S.load_study(S.final_study_name(name), S.open_storage(storage_url)).get_trials()
    assert sorted(t.user_attrs["item"] for t in final if t.state == TrialState.COMPLETE) == \
        ["rep-0", "rep-0/fold-0", "rep-0/fold-1", "rep-0/fold-2", "rep-0/fold-3"]
    assert sum(int(o.split(" trials, ")[1].split()[0]) for o in outs) == 5
    rec = json.loads((tmp_path / "out" / name / "final" / "rep-0" / "record.json").read_text())
    assert rec["mlrc"]["best_trial"] == max(done, key=lambda t: t.value).number


def test_killed_worker_trial_is_requeued_and_finished(storage_url, tmp_path):
    out = tmp_path / "out"
    # slower folds (a few seconds each) so that the kill lands inside a trial
    name = _create(storage_url, out, 3, "train.epochs=3", "train.iterations_per_epoch=12")
    a = _worker(name, storage_url, out)
    st = S.open_storage(storage_url)
    victim, snapshot, b = None, {}, None
    deadline = time.monotonic() + 240
    try:
        while victim is None:
            assert time.monotonic() < deadline, "worker A never reached the middle of a trial"
            assert a.poll() is None, a.communicate()[1][-3000:]
            trials = S.load_study(name, st).get_trials()
            mine = [t for t in trials if t.state == TrialState.RUNNING
                    and t.user_attrs.get("worker", "").endswith(f":{a.pid}")]
            if mine and b is None:
                b = _worker(name, storage_url, out)
            for t in mine:
                if "fold_0" in t.user_attrs and "fold_3" not in t.user_attrs:
                    os.kill(a.pid, signal.SIGKILL)
                    a.wait()
                    victim = t
                    snapshot = {x.number: (x.value, x.params) for x in trials
                                if x.state == TrialState.COMPLETE}
                    break
            time.sleep(0.1)
        _finish(b)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    trials = _trials(name, storage_url)
    done = _check_exact(trials, 3)
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and "fail_reason" not in dead.user_attrs
    retry = [t for t in done if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1
    assert retry[0].params == victim.params
    # the fold finished before the kill is kept as recorded, not retrained
    assert retry[0].user_attrs["fold_0"] == victim.user_attrs["fold_0"]
    assert retry[0].user_attrs["fold_values"][0] == victim.user_attrs["fold_0"]["value"]
    for number, (value, params) in snapshot.items():
        assert trials[number].state == TrialState.COMPLETE
        assert (trials[number].value, trials[number].params) == (value, params)


def test_unreachable_storage_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "dmlbench.bench.cli", "worker", "s", "--storage",
                           "postgresql://someone:secret@127.0.0.1:1/nodb"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dmlbench: error: cannot open storage postgresql://someone:***@")
    assert "secret" not in err


@pytest.mark.parametrize("storage", [None, "given.db"])
def test_several_workers_on_sqlite_refused_before_anything_is_written(tmp_path, storage):
    from dmlbench.bench.errors import UserError
    from dmlbench.protocols.mlrc import run_mlrc

    cfg = load_config(overrides=[*TINY, "method.name=normsoftmax"])
    url = str(tmp_path / storage) if storage else None
    with pytest.raises(UserError, match="2 workers need a storage that several processes can "
                                        "share"):
        run_mlrc(cfg, SearchOptions(n_trials=1, workers=2, storage=url), tmp_path / "out",
                 log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_studies_shows_stale_trials_of_a_journal_storage(tmp_path, capsys):
    """HeartbeatJournalStorage keeps heartbeats as a system attribute: a RUNNING trial whose
    last one (or its start) is older than the grace period is shown stale."""
    from dmlbench.bench.cli import main

    url = f"journal://{tmp_path / 'studies.log'}"
    cfg = load_config(overrides=[*TINY, "method.name=normsoftmax"])
    name, settings = build_settings(cfg, SearchOptions(n_trials=3, heartbeat_interval=1,
                                                       grace_period=2), tmp_path)
    st = S.open_storage(url)
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    dead, alive = study.ask(), study.ask()
    assert main(["studies", "--storage", url]) == 0
    assert f"  {name}  2 running  (n_trials 3)" in capsys.readouterr().out
    time.sleep(2.5)
    st.storage.set_trial_system_attr(alive._trial_id, S.HEARTBEAT_KEY, time.time())
    assert main(["studies", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert f"  {name}  1 running, 1 stale  (n_trials 3)" in out
    assert (f"    stale: trial {dead.number}: no heartbeat for more than the 2 s grace period "
            "(the worker died); the next worker on the study re-queues it") in out
