"""A suite's runs are identified by their configuration: variants never collapse, changed
settings train anew, and tables show only what the current plan produced."""
from __future__ import annotations

import yaml

from dmlbench.bench.suite import run_suite
from dmlbench.results.tables import load_runs
from tests.conftest import TINY_SUITE_CONFIG


def _suite(tmp_path, runs):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "seeds": [0], "config": TINY_SUITE_CONFIG,
                                    "runs": runs}))
    return str(path)


def test_variants_and_changed_overrides(tmp_path):
    out = tmp_path / "out"
    s = _suite(tmp_path, [{"method": "normsoftmax", "name": "nsm"},
                          {"method": "normsoftmax", "name": "nsm-t1",
                           "params": {"temperature": 0.1}},
                          {"method": "normsoftmax", "name": "nsm-t1-again",
                           "params": {"temperature": 0.1}}])
    logs: list[str] = []
    res = run_suite(s, [], str(out), log=logs.append)
    assert not res["failed"] and len(res["records"]) == 3
    assert len({r["run_id"] for r in res["records"]}) == 3
    assert res["html"] is not None and res["html"].exists()
    # the same suite again: nothing trains
    logs.clear()
    again = run_suite(s, [], str(out), log=logs.append)
    assert again["records"] == [] and sum("done before, skipped" in x for x in logs) == 3
    # new overrides: every run trains anew, and the table holds only the new rows
    new = run_suite(s, ["train.lr=0.01"], str(out), log=logs.append)
    assert len(new["records"]) == 3
    df = load_runs(out)
    assert len(df) == 3 and sorted(df["method"]) == ["nsm", "nsm-t1", "nsm-t1-again"]
    lrs = {r["config"]["train"]["lr"] for r in new["records"]}
    assert lrs == {0.01}
    assert len([p for p in out.iterdir() if p.is_dir()]) == 6   # the old runs are kept
