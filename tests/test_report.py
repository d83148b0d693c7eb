"""The HTML report: its numbers against the records (numpy), its warnings and settings cards,
the CLI flag on a real tiny suite, and a real headless browser (Debian's chromium, driven over
the DevTools protocol on a pipe) that renders it from disk without console errors or network."""
from __future__ import annotations

import base64
import fcntl
import html as htmllib
import io
import json
import math
import os
import re
import selectors
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from dmlbench.bench.records import write_record
from dmlbench.results.html import markdown_to_html, run_budget, write_html_report
from dmlbench.results.importance import write_importance_report

from .conftest import TINY_SUITE_CONFIG

METRICS = ["precision_at_1", "r_precision", "mean_average_precision_at_r"]
# method -> (base, epochs); memvir+normsoftmax trains twice the epochs of its base
CONV = {"normsoftmax": (None, 4), "memvir+normsoftmax": ("normsoftmax", 8), "ms": (None, 4),
        "ms+das": ("ms", 4)}
SEEDS = [0, 1, 2]
MLRC = {"normsoftmax": None, "memvir+normsoftmax": "normsoftmax"}
WALL = 90.0  # seconds per conventional run


def _curve(i: int, seed: int, epochs: int) -> list[dict]:
    rng = np.random.default_rng(100 * i + seed)
    out = []
    for e in range(1, epochs + 1):
        base = 0.2 + 0.05 * i + 0.03 * e + rng.uniform(-0.02, 0.02)
        out.append({"epoch": e, "iteration": 50 * e,
                    "metrics": {m: round(base - 0.05 * k, 6) for k, m in enumerate(METRICS)}})
    return out


def _config(method: str, epochs: int, seed: int, protocol: str = "conventional") -> dict:
    return {"dataset": {"name": "cub", "image_size": 227, "transforms": "conventional"},
            "model": {"trunk": "bninception", "pretrained": True, "embedding_size": 512,
                      "pooling": "avgmax", "freeze_bn": True, "freeze_bn_affine": False},
            "method": {"name": method, "params": {"loss_lr": 0.01} if "normsoftmax" in method
                       else {}},
            "train": {"batch_size": 32, "m_per_class": 4, "optimizer": "adam", "lr": 1e-5,
                      "embedder_lr": 1e-4, "weight_decay": 1e-4, "schedule": "none",
                      "epochs": epochs, "iterations_per_epoch": None, "eval_every": 1,
                      "patience": None if protocol == "conventional" else 3,
                      "augment": True, "device": "cpu"},
            "run": {"seed": seed, "protocol": protocol}}


def _conv_record(i: int, method: str, seed: int) -> dict:
    base, epochs = CONV[method]
    evals = _curve(i, seed, epochs)
    best = max(evals, key=lambda e: e["metrics"]["precision_at_1"])
    return {"schema": 1, "run_id": f"cub--{method}--s{seed}", "status": "completed",
            "suite": "synthetic", "method": method, "base_method": base, "dataset": "cub",
            "protocol": "conventional", "seed": seed, "config": _config(method, epochs, seed),
            "evaluations": evals, "final": evals[-1],
            "best": {**best, "selected_by": "precision_at_1", "selection_set": "test"},
            "wall_time_s": WALL, "images_per_s": 100.0, "train_time_s": 80.0,
            "versions": {"torch": "2.9.0", "dmlbench": "0.1.0"}, "git_commit": "abc1234",
            "error": None, "created": f"2024-01-01T00:00:{i * 3 + seed:02d}+00:00",
            "suite_position": {"dataset": 0, "run": i}, "epochs_run": epochs}


def _mlrc_record(i: int, method: str, rep: int, study: str) -> dict:
    rng = np.random.default_rng(1000 + 10 * i + rep)
    folds = [{"fold": p, "best_epoch": 2, "val_map_at_r": 0.3, "epochs_run": 4,
              "test": {m: round(0.3 + 0.02 * p + rng.uniform(0, 0.02), 6) for m in METRICS}}
             for p in range(4)]
    conc = {m: round(0.4 + 0.01 * i + rng.uniform(-0.02, 0.02), 6) for m in METRICS}
    sep = {m: float(np.mean([f["test"][m] for f in folds])) for m in METRICS}
    return {"schema": 1, "run_id": f"{study}--rep{rep}", "status": "completed",
            "suite": "synthetic", "method": method, "base_method": MLRC[method],
            "dataset": "cub", "protocol": "mlrc", "seed": rep + 1,
            "config": _config(method, 10, rep + 1, "mlrc"), "evaluations": [],
            "final": {"epoch": None, "metrics": conc},
            "best": {"epoch": None, "metrics": conc, "selected_by": MAP_R, "selection_set": "val"},
            "mlrc": {"separated": {"metrics": sep}, "concatenated": {"metrics": conc},
                     "study": study, "best_trial": 0, "best_value": 0.31,
                     "best_params": {"loss_lr": 0.01}, "folds": folds},
            "wall_time_s": 600.0, "versions": {"torch": "2.9.0"}, "git_commit": "abc1234",
            "error": None, "created": "2024-01-02T00:00:00+00:00",
            "suite_position": {"dataset": 0, "run": i}}


MAP_R = "mean_average_precision_at_r"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic suite: OUT with conventional records, OUT-mlrc with MLRC records, their
    studies (one with intermediate values) in OUT-mlrc/studies.db and importance reports."""
    root = tmp_path_factory.mktemp("report")
    out, mout = root / "suite", root / "suite-mlrc"
    for i, method in enumerate(CONV):
        for seed in SEEDS:
            write_record(out / f"cub--{method}--s{seed}" / "record.json",
                         _conv_record(i, method, seed))
    write_record(out / "cub--ms--s9" / "record.json",
                 {**_conv_record(2, "ms", 9), "status": "diverged", "error": "loss is NaN"})
    storage = f"sqlite:///{mout / 'studies.db'}"
    mout.mkdir(parents=True)
    dists = {"loss_lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for i, method in enumerate(MLRC):
        name = f"mlrc--cub--{method}--h{i}"
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr("dmlbench", {"experiment": {"protocol": "mlrc", "num_folds": 4},
                                         "config": {"train": {"epochs": 3}}})
        for t in range(4):
            iv = ({p * 3 + e: 0.1 * t + 0.02 * e + 0.01 * p for p in range(4) for e in (1, 2, 3)}
                  if i == 0 else {})
            study.add_trial(create_trial(params={"loss_lr": 10 ** -(1 + t / 2)},
                                         distributions=dists, value=0.25 + 0.02 * t,
                                         intermediate_values=iv,
                                         user_attrs={"timing": {"trial_s": 360.0}}))
        write_importance_report(study, mout / name / "importance", n_trees=8)
        for rep in range(3):
            write_record(mout / name / "final" / f"rep-{rep}" / "record.json",
                         _mlrc_record(i, method, rep, name))
    return out, mout


class _Page(HTMLParser):
    """Results-table cells, images and cards of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple, dict[str, str]] = {}
        self.rows: dict[tuple, list[str]] = {}
        self.images: list[str] = []
        self.cards: dict[tuple, dict[str, str]] = {}
        self.urls: list[str] = []
        self._table = self._row = self._cell = self._card = self._th = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "action", "poster", "data"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table" and "results" in (a.get("class") or ""):
            self._table = (a["data-protocol"], a["data-dataset"])
            self.rows[self._table] = []
        elif tag == "tr" and self._table:
            self._row = None
        elif tag == "td" and self._table:
            if "method" in (a.get("class") or ""):
                self._row = a["data-sort"]
                self.rows[self._table].append(self._row)
            elif "data-metric" in a:
                self._cell = {**a, "text": ""}
                self.cells[(*self._table, self._row, a["data-metric"], a["data-stat"])] = self._cell
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "details" and "card" in (a.get("class") or ""):
            self._card = {}
            self.cards[(a["data-protocol"], a["data-method"], a["data-dataset"])] = self._card
        elif tag == "th" and self._card is not None:
            self._th, self._text = True, []
        elif tag == "td" and self._card is not None:
            self._text = []

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table = None
        elif tag == "td" and self._cell is not None:
            self._cell = None
        elif tag == "th" and self._card is not None and self._th:
            self._key, self._th = "".join(self._text).strip(), None
        elif tag == "td" and self._card is not None:
            self._card[self._key] = "".join(self._text).strip()
        elif tag == "details":
            self._card = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._card is not None:
            self._text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _published() -> pd.DataFrame:
    pub = pd.DataFrame({"method": ["normsoftmax", "memvir+normsoftmax", "arcface"],
                        "dataset": ["cub"] * 3, "metric": ["P@1"] * 3,
                        "value": [30.0, 32.5, 60.0], "protocol": ["conventional"] * 3})
    return pub


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> tuple[Path, str]:
    out, mout = runs
    path = write_html_report([out, mout], tmp_path_factory.mktemp("html") / "report.html",
                             published=_published())
    return path, path.read_text(encoding="utf-8")


def _values(runs_dir: Path, method: str, metric: str, protocol: str) -> np.ndarray:
    from dmlbench.bench.records import read_records

    recs = [r for r in read_records(runs_dir) if r["method"] == method
            and r["status"] == "completed" and r["protocol"] == protocol]
    if protocol == "mlrc":
        return np.array([r["mlrc"]["concatenated"]["metrics"][metric] for r in recs])
    return np.array([r["best"]["metrics"][metric] for r in recs])


def test_table_numbers_are_the_records_means_spreads_deltas_and_published(runs, report):
    out, mout = runs
    page = _parse(report[1])
    assert list(page.rows) == [("conventional", "cub"), ("mlrc", "cub")]
    # declared order (suite_position), each base followed by its variant
    assert page.rows[("conventional", "cub")] == ["normsoftmax", "memvir+normsoftmax", "ms",
                                                  "ms+das"]
    for method, (base, _) in CONV.items():
        for metric in METRICS:
            v = _values(out, method, metric, "conventional")
            assert len(v) == 3  # the diverged ms run is left out
            cell = page.cells[("conventional", "cub", method, metric, "mean")]
            assert float(cell["data-sort"]) == pytest.approx(100 * v.mean(), abs=1e-9)
            assert float(cell["data-spread"]) == pytest.approx(100 * np.std(v, ddof=1), abs=1e-9)
            assert cell["text"].startswith(
                f"{100 * v.mean():.2f} ± {100 * np.std(v, ddof=1):.2f}")
            delta = page.cells[("conventional", "cub", method, metric, "delta")]
            if base is None:
                assert delta["data-sort"] == ""
            else:
                want = v.mean() - _values(out, base, metric, "conventional").mean()
                assert float(delta["data-sort"]) == pytest.approx(100 * want, abs=1e-9)
    # published numbers and our difference to them
    p = page.cells[("conventional", "cub", "normsoftmax", "precision_at_1", "published")]
    d = page.cells[("conventional", "cub", "normsoftmax", "precision_at_1", "diff")]
    ours = _values(out, "normsoftmax", "precision_at_1", "conventional").mean()
    assert float(p["data-sort"]) == pytest.approx(30.0) and p["text"] == "30.00"
    assert float(d["data-sort"]) == pytest.approx(100 * ours - 30.0)
    # MLRC: concatenated test metrics, mean ± t-based 95% CI over the 3 reproductions
    from scipy import stats

    v = _values(mout, "memvir+normsoftmax", MAP_R, "mlrc")
    cell = page.cells[("mlrc", "cub", "memvir+normsoftmax", MAP_R, "mean")]
    assert float(cell["data-sort"]) == pytest.approx(100 * v.mean())
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert float(cell["data-spread"]) == pytest.approx(100 * half)
    assert "95% CI" in report[1] and "sample std" in report[1]


def test_warnings_test_selection_and_budget_ratio(report):
    text = report[1]
    page = _parse(text)
    conv = [c for k, c in page.cells.items() if k[0] == "conventional" and k[4] == "mean"]
    mlrc = [c for k, c in page.cells.items() if k[0] == "mlrc" and k[4] == "mean"]
    assert conv and all("⚠test" in c["text"] for c in conv)
    assert mlrc and not any("⚠test" in c["text"] for c in mlrc)
    # memvir+normsoftmax: 8 epochs against its base's 4, same iterations and batch: x2
    row = re.search(r'<td class="method" data-sort="memvir\+normsoftmax">(.*?)</td>', text)
    assert "⚠ budget ×2" in row.group(1)
    assert "8 epochs × 50 it × 32 against 4 epochs × 50 it × 32" in htmllib.unescape(row.group(1))
    for other in ("ms+das", "normsoftmax", "ms"):
        row = re.search(rf'<td class="method" data-sort="{re.escape(other)}">(.*?)</td>', text)
        assert "budget" not in row.group(1)
    top = re.search(r'<div class="box" id="warnings">(.*?)</div>', text, re.S).group(1)
    top = htmllib.unescape(top)
    assert "memvir+normsoftmax on cub was trained with 2× the budget of its base normsoftmax" in top
    assert "chosen on the test classes" in top
    assert "1 run not in the table: ms / cub / seed 9: diverged (loss is NaN)" in top


def test_budget_of_a_run():
    rec = _conv_record(0, "normsoftmax", 0)
    assert run_budget(rec) == {"epochs": 4, "iterations_per_epoch": 50, "batch_size": 32,
                               "images": 4 * 50 * 32}
    rec["config"]["train"]["iterations_per_epoch"] = 7
    assert run_budget(rec)["images"] == 4 * 7 * 32
    rec["config"]["train"]["iterations_per_epoch"] = None
    rec["evaluations"] = []
    rec["num_train_images"] = 1000
    assert run_budget(rec)["iterations_per_epoch"] == 1000 // 32


def test_disclosure_cards(runs, report):
    page = _parse(report[1])
    assert set(page.cards) == {("conventional", m, "cub") for m in CONV} | {
        ("mlrc", m, "cub") for m in MLRC}
    card = page.cards[("conventional", "memvir+normsoftmax", "cub")]
    assert card["trunk"] == "bninception (pretrained)"
    assert card["embedding size"] == "512" and card["pooling"] == "avgmax"
    assert card["frozen BatchNorm"] == "yes"
    assert card["image size and transforms"] == "227 px, transforms conventional, augment yes"
    assert card["batch size, m per class"] == "32, m per class 4"
    assert card["optimiser and learning rates"] == ("adam, lr 1e-05, embedder lr 0.0001, loss_lr "
                                                    "0.01, weight decay 0.0001, schedule none")
    assert card["epochs and iterations"] == "8 epochs × 50 iterations × batch 32, evaluated every 1"
    assert card["selection"].startswith("best of 8 evaluations by P@1 on the test set")
    assert "selected on the test set" in card["selection"]
    assert card["seeds"] == "0, 1, 2"
    assert card["device"].startswith("cpu")
    assert card["measured time"] == f"{3 * WALL / 3600:.3f} CPU-hours (3 runs)"
    assert card["package versions"] == "dmlbench 0.1.0, torch 2.9.0"
    assert card["git commit"] == "abc1234"
    m = page.cards[("mlrc", "normsoftmax", "cub")]
    assert m["selection"].startswith("best epoch of each fold on its validation classes")
    assert "selected on the test set" not in m["selection"]
    # reproductions 3 x 600 s; the search: 4 trials x 360 s from the study
    assert m["measured time"] == ("0.500 CPU-hours (3 runs, reproductions only; "
                                  "search: 0.400 h of trials)")
    assert m["best parameters"] == "loss_lr=0.01" and m["seeds"] == "1, 2, 3"


def test_card_device_and_hours_of_a_data_parallel_run(tmp_path):
    from dmlbench.results.html import render_html_report

    for seed in (0, 1):
        rec = _conv_record(0, "ms", seed)
        rec.update(device="cuda:0 (NVIDIA H200)", world_size=4, wall_time_s=1800.0)
        write_record(tmp_path / f"r{seed}" / "record.json", rec)
    card = _parse(render_html_report(tmp_path)).cards[("conventional", "ms", "cub")]
    assert card["device"] == "cuda:0 (NVIDIA H200) × 4 processes"
    assert card["measured time"] == "4.000 GPU-hours (2 runs)"  # 2 x 0.5 h x 4 GPUs


def test_figures_and_importance_inline(report):
    text = report[1]
    page = _parse(text)
    pngs = [base64.b64decode(s.split(",", 1)[1]) for s in page.images
            if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(page.images) and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # curves, MLRC folds, 1 validation-curve figure, 2 x 3 importance figures
    assert len(pngs) == 1 + 1 + 1 + 6
    for alt in ("learning curves on cub", "MLRC test scores per fold on cub",
                "validation curves of mlrc--cub--normsoftmax--h0", "importance", "marginals",
                "history"):
        assert f'alt="{alt}"' in text, alt
    assert ("Study mlrc--cub--memvir+normsoftmax--h1: no per-fold validation curves" in
            htmllib.unescape(text))
    assert text.count('class="imp report"') == 2
    assert "Importance is not meaningful here: 4 completed trials" in text


def test_self_contained_no_external_urls(report):
    text = report[1]
    page = _parse(text)
    assert page.urls and all(u.startswith(("data:", "#")) for u in page.urls), [
        u[:40] for u in page.urls if not u.startswith(("data:", "#"))]
    assert re.search(r"https?://", text) is None
    assert re.search(r"url\(|@import|<link|<iframe", text) is None
    assert "default-src 'none'; img-src data:" in text  # CSP: nothing else may load


def test_markdown_subset():
    md = "# T\n\nA **b** c | d\n\n| x | y |\n|:---|---:|\n| a \\| b | 1 |\n\n- one\n- two\n"
    got = markdown_to_html(md, shift=1)
    assert got == ("<h2>T</h2>\n<p>A <strong>b</strong> c | d</p>\n"
                   '<table class="plain"><thead><tr><th>x</th><th>y</th></tr></thead><tbody>'
                   '<tr><td class="">a | b</td><td class="num">1</td></tr></tbody></table>\n'
                   "<ul><li>one</li><li>two</li></ul>")
    assert "&lt;script&gt;" in markdown_to_html("<script>x</script>")
    assert "not found" in markdown_to_html("![a](missing.png)")


def test_cli_html_on_a_real_tiny_suite(tmp_path, capsys, one_thread):
    """A real suite (conventional + MLRC part) and `report --html` on its output folder."""
    import yaml

    from dmlbench.bench.cli import main

    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "seeds": [0, 1], "config": TINY_SUITE_CONFIG,
        "runs": ["normsoftmax", "memvir+normsoftmax"],
        "mlrc": {"search": {"n_trials": 2, "reproductions": 2, "sampler": "random",
                            "space": {"loss_lr": ["log", 0.001, 0.01]}},
                 "config": {"train": {"epochs": 1}},
                 "runs": [{"method": "normsoftmax"}]}}))
    out = tmp_path / "runs" / "tiny"
    assert main(["suite", str(suite), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--html"]) == 0
    printed = capsys.readouterr().out
    path = out / "report.html"
    assert f"html: {path}" in printed
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    assert list(page.rows) == [("conventional", "glyphs"), ("mlrc", "glyphs")]
    assert page.rows[("conventional", "glyphs")] == ["normsoftmax", "memvir+normsoftmax"]
    v = _values(out, "normsoftmax", "precision_at_1", "conventional")
    cell = page.cells[("conventional", "glyphs", "normsoftmax", "precision_at_1", "mean")]
    assert float(cell["data-sort"]) == pytest.approx(100 * v.mean())
    assert 'alt="learning curves on glyphs"' in text
    assert 'alt="MLRC test scores per fold on glyphs"' in text
    assert text.count('class="imp report"') == 1
    assert ("conventional", "normsoftmax", "glyphs") in page.cards


# ----------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


class DevTools:
    """A Chrome DevTools Protocol session over --remote-debugging-pipe (fds 3 and 4):
    JSON messages separated by NUL bytes; no network port, no websocket library."""

    def __init__(self, exe: str, profile: Path, width: int, height: int) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends become fds 3 (read) and 4 (write)
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--mute-audio", "--hide-scrollbars",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._from_child, selectors.EVENT_READ)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


_CHECK = """(() => {
  const visible = el => { const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const tables = [...document.querySelectorAll('table.results')];
  const imgs = [...document.querySelectorAll('img')];
  const t = tables[0];
  const firstRow = t ? t.getBoundingClientRect() : null;
  return {tables: tables.length, visibleTables: tables.filter(visible).length,
          tableTop: firstRow ? firstRow.top : -1, innerHeight: innerHeight,
          images: imgs.length,
          loadedImages: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          visibleImages: imgs.filter(i => visible(i) && i.naturalWidth > 0).length,
          rows: t ? [...t.tBodies[0].rows].map(r => r.cells[0].dataset.sort) : []};
})()"""

_SORT = """(() => {
  const t = document.querySelector('table.results');
  const th = [...t.tHead.rows[0].cells].find(c => c.dataset.col === 'value:precision_at_1');
  th.click();
  const first = [...t.tBodies[0].rows].map(r => r.cells[0].dataset.sort);
  th.click();
  const second = [...t.tBodies[0].rows].map(r => r.cells[0].dataset.sort);
  const card = document.querySelector('td.method a');
  card.click();
  const opened = document.getElementById(card.getAttribute('href').slice(1)).open;
  return {asc: first, desc: second, sortAttr: th.getAttribute('aria-sort'), opened: opened};
})()"""


def _render(path: Path, profile: Path, shot: Path, width: int = 1400, height: int = 2000,
            interact: bool = True) -> dict:
    exe = _chromium()
    tools = DevTools(exe, profile, width, height)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True}
                             )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                          "deviceScaleFactor": 1,
                                                          "mobile": False}, session=session)
        tools.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        tools.wait_for("Page.loadEventFired")
        state = tools.send("Runtime.evaluate", {"expression": _CHECK, "returnByValue": True},
                           session=session)["result"]["value"]
        png = base64.b64decode(tools.send("Page.captureScreenshot", {"format": "png"},
                                          session=session)["data"])
        shot.write_bytes(png)
        sort = tools.send("Runtime.evaluate", {"expression": _SORT, "returnByValue": True},
                          session=session)["result"]["value"] if interact else None
        tools.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush events
    finally:
        tools.close()
    errors = []
    for e in tools.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(str(p.get("args")))
        elif e.get("method") == "Runtime.exceptionThrown":
            errors.append(str(p.get("exceptionDetails")))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(str(p["entry"]))
    requests = [e["params"]["request"]["url"] for e in tools.events
                if e.get("method") == "Network.requestWillBeSent"]
    return {"state": state, "sort": sort, "errors": errors, "requests": requests, "png": png}


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium; .ci/run installs it in CI)")
def test_browser_renders_report_without_errors_or_network(report, tmp_path, runs):
    from PIL import Image

    path = report[0]
    shot = tmp_path / "report.png"
    got = _render(path, tmp_path / "profile", shot)
    keep = os.environ.get("DMLBENCH_SCREENSHOTS")
    if keep:  # to look at it
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
    assert got["errors"] == []
    # the page itself is the only request; nothing goes to the network
    assert got["requests"] and all(u.startswith(("file:", "data:", "about:"))
                                   for u in got["requests"]), got["requests"]
    assert got["requests"][0] == path.resolve().as_uri()
    s = got["state"]
    assert s["tables"] == 2 and s["visibleTables"] == 2
    assert 0 <= s["tableTop"] < s["innerHeight"]  # the first table is on the first screen
    assert s["images"] == 9 and s["loadedImages"] == 9 and s["visibleImages"] >= 1
    assert s["rows"] == ["normsoftmax", "memvir+normsoftmax", "ms", "ms+das"]
    # sorting by P@1: ascending, then descending, by the records' means
    out = runs[0]
    means = {m: _values(out, m, "precision_at_1", "conventional").mean() for m in CONV}
    assert got["sort"]["asc"] == sorted(means, key=means.get)
    assert got["sort"]["desc"] == sorted(means, key=means.get, reverse=True)
    assert got["sort"]["sortAttr"] == "descending" and got["sort"]["opened"] is True
    # the screenshot is not blank: the first screen holds text, a table and colour
    img = Image.open(io.BytesIO(got["png"])).convert("RGB")
    assert img.size == (1400, 2000)
    px = np.asarray(img).reshape(-1, 3)
    white = np.all(px > 245, axis=1).mean()
    assert 0.05 < 1 - white, "screenshot is (nearly) blank"
    assert len(np.unique(px // 16, axis=0)) > 50  # not a flat page


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium; .ci/run installs it in CI)")
def test_browser_sees_a_blocked_external_request(tmp_path):
    """The check above can fail: a page that loads an external image is caught twice (the
    request and the CSP's console error)."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'; img-src data:; script-src 'unsafe-inline'\">"
                    "</head><body>"
                    '<img src="https://example.invalid/x.png"><script>console.error("boom")'
                    "</script></body></html>")
    got = _render(page, tmp_path / "profile", tmp_path / "bad.png", 400, 300, interact=False)
    assert any("boom" in e for e in got["errors"])
    assert any("example.invalid" in e for e in got["errors"])  # refused by the CSP


def test_report_modules_import_no_torch_methods_or_protocols(runs, tmp_path):
    import sys

    code = ("import sys; from dmlbench.results.html import write_html_report; "
            f"write_html_report([{str(runs[0])!r}, {str(runs[1])!r}], {str(tmp_path / 'r.html')!r}); "
            "print(sorted(m for m in sys.modules if (m.split('.')[0] in "
            "('torch',) or m.startswith(('dmlbench.methods', 'dmlbench.protocols', "
            "'dmlbench.bench.train')) or m == 'matplotlib.pyplot') "
            "and m not in ('dmlbench.methods', 'dmlbench.methods.errors')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "r.html").stat().st_size > 10_000
