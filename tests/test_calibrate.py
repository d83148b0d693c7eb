"""`dmlbench calibrate` (bench/calibrate.py) and the plan's use of it (suite/estimate.py):
the stored figures, a second process reading them, measured vs assumed lines, the patience
range and the data paths, against hand computations."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from dmlbench.bench import calibrate as K
from dmlbench.bench import suite as S
from dmlbench.bench.cli import main
from dmlbench.bench.config import load_config
from dmlbench.bench.suite import estimate as E
from tests.conftest import TINY_SUITE_CONFIG

TINY = ["model.width=4", "model.embedding_size=16", "train.batch_size=16", "eval.batch_size=32",
        "train.threads=1"]


@pytest.fixture
def cal_file(tmp_path, monkeypatch):
    path = tmp_path / "cal" / "calibration.json"
    monkeypatch.setenv("DMLBENCH_CALIBRATION", str(path))
    return path


def test_calibration_path_env(tmp_path, monkeypatch):
    monkeypatch.delenv("DMLBENCH_CALIBRATION", raising=False)
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path))
    assert K.calibration_path() == tmp_path / "calibration.json"
    monkeypatch.setenv("DMLBENCH_CALIBRATION", str(tmp_path / "x.json"))
    assert K.calibration_path() == tmp_path / "x.json"


def test_calibrate_tiny_trunk_stores_and_another_process_reads(cal_file):
    cfg = load_config(overrides=[*TINY, "dataset.transforms=mlrc", "dataset.image_size=32"])
    res = K.calibrate(cfg, device="cpu", iterations=2, data_images=8)
    m, d = res["model"], res["data"]
    assert res["path"] == str(cal_file) and m["iterations"] == 2 and m["threads"] == 1
    assert m["train_images_per_s"] == pytest.approx(16 / m["step_s"])
    assert m["embed_images_per_s"] > 0 and not m["amp_used"]
    assert d["images"] == 8 and d["pil_cpu_s"] > 0 and d["cache_s"] > 0
    name = K.device_name("cpu")
    assert name.startswith("cpu: ") and res["device"] == name
    # a second process reads the same figures under the same keys
    code = ("import json; from dmlbench.bench.calibrate import load_calibration as L; "
            "print(json.dumps(L()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DMLBENCH_CALIBRATION": str(cal_file)}, check=True)
    other = json.loads(out.stdout)
    key = K.model_key(name, "smallcnn", 16, 32, False)
    assert other["model"][key]["train_images_per_s"] == m["train_images_per_s"]
    assert other["data"][K.data_key(name, "mlrc", 32)]["cache_s"] == d["cache_s"]
    # another entry is added beside, not over, the first
    K.store({"x": {"train_images_per_s": 1.0}})
    assert set(K.load_calibration()["model"]) == {key, "x"}


def test_corrupt_calibration_file_is_a_user_error(cal_file):
    cal_file.parent.mkdir(parents=True)
    cal_file.write_text("{not json")
    with pytest.raises(K.UserError, match="delete it and run `dmlbench calibrate"):
        K.load_calibration()


def test_earliest_stop_by_hand():
    # best at the first evaluation (epoch 2); stops at the first evaluation more than 3
    # epochs later: 4 -> 2 epochs, 6 -> 4 > 3: epoch 6
    assert E.earliest_stop(10, 2, 3) == 6
    # the presets' MLRC rules: CUB 2/9 -> 12, CARS 5/14 -> 20, SOP 20/39 -> 60
    assert [E.earliest_stop(1000, e, p) for e, p in ((2, 9), (5, 14), (20, 39))] == [12, 20, 60]
    assert E.earliest_stop(5, 2, 3) == 5 and E.earliest_stop(10, 2, None) == 10
    assert E.earliest_stop(3, 5, 0) == 3


def test_study_range_by_hand():
    _, _, _, studies, _ = S.prepare("demo", [], None)
    ps = studies[0]
    cfg, t = ps.cfg, ps.cfg["train"]
    assert (t["epochs"], t["eval_every"], t["patience"]) == (4, 1, 1)
    e = E.estimate_study(ps)
    fits = (4 + 3) * 4
    # min: best at epoch 1, since_best 2 > 1 at epoch 3 -> 3 epochs; max: all 4
    assert e.stop_epochs == (3, 4)
    sizes = E.dataset_sizes(cfg)
    per_epoch = 16 * 32
    hi = E._path_hours(E.rates(cfg), fits * 4 * per_epoch,
                       fits * 4 * sizes["val"] + 3 * 4 * sizes["test_mlrc"])
    assert e.train_images == fits * 4 * per_epoch
    # smallcnn: negligible GPU time with assumed figures
    assert e.hours["model"] == (0.0, 0.0) and hi["model"] == 0.0
    cal = {"model": {K.model_key_of(cfg, "dev"): {"train_images_per_s": 400.0,
                                                   "embed_images_per_s": 2000.0}}, "data": {}}
    e = E.estimate_study(ps, calibration=cal, device="dev")
    lo_want = (fits * 3 * per_epoch / 400 + (fits * 3 * sizes["val"]
                                             + 12 * sizes["test_mlrc"]) / 2000) / 3600
    hi_want = (fits * 4 * per_epoch / 400 + (fits * 4 * sizes["val"]
                                             + 12 * sizes["test_mlrc"]) / 2000) / 3600
    assert e.measured and not e.data_measured
    assert e.hours["model"] == pytest.approx((lo_want, hi_want)) and lo_want < hi_want
    # glyphs is in memory: no data cost on either path
    assert e.hours["pil"] == e.hours["cache"] == e.hours["model"]


def _cub_cfg(workers: int) -> dict:
    return load_config(overrides=["dataset.name=cub", "model.trunk=bninception",
                                  "dataset.image_size=227", "dataset.transforms=mlrc",
                                  "train.amp=true", "train.batch_size=32", "train.epochs=10",
                                  "train.eval_every=5", f"train.num_workers={workers}"])


def test_data_paths_by_hand():
    cfg = _cub_cfg(0)
    e = E.estimate_run(cfg)
    T, V = e.train_images, e.eval_images
    pil, cache = E.PIL_CPU_S, E.CACHE_DEVICE_S
    assert (T, V) == (10 * (5864 // 32) * 32, 2 * 5924)   # CUB: 5,864 train, 5,924 test
    want = {"model": (T / 1000 + V / 3000) / 3600,
            "pil": (T * (1 / 1000 + pil) + V * (1 / 3000 + pil)) / 3600,
            "cache": (T * (1 / 1000 + cache) + V * (1 / 3000 + cache)) / 3600}
    for p, h in want.items():
        assert e.hours[p] == pytest.approx((h, h))
    # without loader workers the cache path is faster than the PIL path, slower than the model
    assert want["model"] < want["cache"] < want["pil"]
    # 8 workers beside the GPU: PIL is limited to 8 x 146 img/s, above the train rate (1000)
    e8 = E.estimate_run(_cub_cfg(8))
    w = 8 / pil
    assert e8.hours["pil"][1] == pytest.approx((T / min(1000, w) + V / min(3000, w)) / 3600)
    # measured data costs replace the assumed ones
    cal = {"model": {}, "data": {K.data_key_of(cfg, "dev"): {"pil_cpu_s": 0.02,
                                                            "cache_s": 0.001}}}
    em = E.estimate_run(cfg, calibration=cal, device="dev")
    assert em.data_measured and not em.measured
    assert em.hours["cache"][1] == pytest.approx((T * (1e-3 + 1e-3) + V * (1 / 3000 + 1e-3))
                                                 / 3600)


def _plan_lines(capsys, *argv) -> str:
    assert main(["suite", *argv, "--plan"]) == 0
    return capsys.readouterr().out


def test_plan_says_measured_and_assumed(cal_file, capsys):
    _, _, runs, studies, _ = S.prepare("demo", [], None)
    cfg = runs[0].cfg                          # batch 64 (the MLRC part: batch 32)
    dev = K.device_name()
    K.store({K.model_key_of(cfg, dev): {"train_images_per_s": 100.0,
                                        "embed_images_per_s": 1000.0}})
    out = _plan_lines(capsys, "demo")
    lines = out.splitlines()
    conv = [x for x in lines if x.startswith("glyphs") and " conventional " in x]
    mlrc = [x for x in lines if x.startswith("glyphs") and " mlrc " in x]
    assert len(conv) == 16 and all("(measured)" in x for x in conv)
    assert len(mlrc) == 2 and all("(assumed)" in x for x in mlrc)
    assert (f"measured on {dev!r} for 16 of 18 lines (hours on that device), assumed for 2; "
            "data-path costs measured for 0, assumed for 0, none for 18 (in-memory") in out
    e = E.estimate_run(cfg, calibration=K.load_calibration(), device=dev)
    assert e.gpu_hours == pytest.approx((e.train_images / 100 + e.eval_images / 1000) / 3600)
    total = float(out.split("total ")[1].split(" GPU h")[0].lstrip("<=~ ").replace(",", ""))
    assert total == pytest.approx(16 * e.gpu_hours, abs=0.051)


def _span(out: str, label: str) -> tuple[float, float]:
    line = next(x for x in out.splitlines() if x.strip().startswith(label))
    nums = line.split(")")[-1].replace("GPU h", "").replace(",", "").split(" - ")
    lo, hi = float(nums[0]), float(nums[-1])
    return lo, hi


def test_plan_totals_by_path(cal_file, capsys):
    out = _plan_lines(capsys, "mlrc")
    model, pil, cache = (_span(out, x) for x in ("model alone", "PIL path", "cache path"))
    assert all(lo < hi for lo, hi in (model, pil, cache))
    # the MLRC preset's 8 loader processes cannot feed BN-Inception's embedding rate: the
    # PIL path takes longer than the cache path, which takes longer than the model alone
    assert model[1] < cache[1] < pil[1] and model[0] < cache[0] < pil[0]
    assert "for 0 of 33 lines (hours on that device), assumed for 33; data-path costs " \
        "measured for 0, assumed for 33 (" in out


def test_calibrate_command(cal_file, tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny", "seeds": [0], "config": TINY_SUITE_CONFIG,
                                     "runs": ["normsoftmax", "ms"]}))
    assert main(["calibrate", str(suite), "--iterations", "2", "--device", "cpu",
                 "eval.batch_size=32"]) == 0
    out = capsys.readouterr().out
    assert "1 distinct (trunk, batch, image size, AMP)" in out and "train " in out
    cal = K.load_calibration()
    (key, entry), = cal["model"].items()
    assert json.loads(key)[1:5] == ["smallcnn", 16, 32, False]
    assert entry["iterations"] == 2 and math.isfinite(entry["embed_images_per_s"])
    # the plan of the same suite now uses the measured figures
    assert "(measured)" in _plan_lines(capsys, str(suite), "eval.batch_size=32")


@pytest.mark.parametrize("device,msg", [("gpu", "is not a device"),
                                        ("cuda", "does not have")])
def test_calibrate_bad_device(device, msg, cal_file, capsys):
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    assert main(["calibrate", "demo", "--device", device]) == 2
    assert msg in capsys.readouterr().err


def test_concurrent_stores_keep_every_entry(cal_file):
    # two processes add 15 entries each at the same time: the lock and the atomic write keep
    # all 30 (a lost update would drop some)
    code = ("import sys; from dmlbench.bench.calibrate import store\n"
            "for i in range(15): store({f'{sys.argv[1]}-{i}': {'i': i}})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, tag],
                              env={**os.environ, "DMLBENCH_CALIBRATION": str(cal_file)})
             for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    got = K.load_calibration()["model"]
    assert set(got) == {f"{t}-{i}" for t in "ab" for i in range(15)}
    assert json.loads(cal_file.read_text())["version"] == K.VERSION
    assert not list(cal_file.parent.glob(".*.tmp"))
