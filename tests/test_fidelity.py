"""Fidelity of a real run's path: the MLRC test evaluation embeds exactly as a fit evaluates
(transforms, normalisation, batch size), and a run's identity is its configuration."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlbench.bench.config import load_config
from dmlbench.bench.data import load_configured
from dmlbench.bench.data.fixtures import build_fixture_tree
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.models import build_model
from dmlbench.bench.models.transforms import make_transforms
from dmlbench.bench.records import fingerprint
from dmlbench.bench.train import fit
from dmlbench.protocols import mlrc as M
from dmlbench.protocols.conventional import run_conventional, run_id
from tests.conftest import TINY

BNI = ["dataset.name=cub", "dataset.transforms=mlrc", "dataset.image_size=32",
       "model.trunk=bninception", "model.pretrained=false", "model.freeze_bn=true",
       "model.embedding_size=16", "method.name=normsoftmax", "train.batch_size=8",
       "train.epochs=1", "train.iterations_per_epoch=1", "train.progress=false",
       "train.threads=1", "eval.batch_size=16"]


def test_mlrc_test_embeddings_are_those_of_the_fit_path(tmp_path, monkeypatch):
    """BN-Inception (random weights) with the MLRC transforms: the test embeddings of the final
    evaluation equal, bit for bit, the fold's best model applied to the test images through the
    preset's eval transform (BGR 0-255 minus the channel means), in eval batches."""
    root = tmp_path / "data"
    build_fixture_tree(root, ["cub"])
    cfg = load_config(overrides=[*BNI, f"dataset.root={root}"])
    seen: list[np.ndarray] = []
    real = M.final.compute_metrics

    def spy(emb, labels, *a, **kw):
        seen.append(np.asarray(emb).copy())
        return real(emb, labels, *a, **kw)

    monkeypatch.setattr(M.final, "compute_metrics", spy)
    out = tmp_path / "out"
    res = M.run_mlrc(cfg, M.SearchOptions(n_trials=1, reproductions=1), out, log=lambda s: None)
    assert res["status"] == "completed"
    rec = res["records"][0]
    data = M.FoldData(load_configured(cfg), 4)
    n_test = len(data.test)
    fold_embs = [e for e in seen if e.shape == (n_test, 16)][:4]
    assert len(fold_embs) == 4
    tf = make_transforms("mlrc", "bninception")(32, False)
    from PIL import Image

    images = [tf(Image.open(data.ds.paths[i]).convert("RGB")) for i in data.test.indices]
    x_all = torch.stack(images)
    # the inputs the trunk must see: BGR 0-255 minus the means, not ImageNet-normalised
    assert float(x_all.std()) > 10
    for p in range(4):
        fdir = out / res["study"] / "final" / "rep-0" / f"fold-{p}"
        model = build_model(rec["config"]["model"], 3)
        model.load_state_dict(torch.load(fdir / "best_model.pt", weights_only=True))
        model.eval()
        with torch.no_grad():
            want = torch.cat([model.embed(x_all[s:s + 16]) for s in range(0, n_test, 16)])
        assert torch.equal(torch.from_numpy(fold_embs[p]), want), f"fold {p}"


def test_fit_hands_back_its_best_model(tiny_glyphs, tiny_overrides, tmp_path):
    """`load_best_model` gives the weights of the best evaluation, in memory and from disk."""
    from dmlbench.bench.train import embed

    cfg = load_config(overrides=[*tiny_overrides, "train.epochs=3"])
    tr = Split.of_classes(tiny_glyphs, tiny_glyphs.train_classes)
    te = Split.of_classes(tiny_glyphs, tiny_glyphs.test_classes)
    for run_dir in (None, tmp_path / "r"):
        res = fit(cfg, tr, te, run_dir=run_dir)
        model = res.load_best_model()
        emb, lab = embed(model, te, cfg)
        m = M.final.compute_metrics(emb, lab, include=cfg["eval"]["metrics"],
                              recall_ks=tuple(cfg["eval"]["recall_ks"]), seed=0)
        assert m == res.best["metrics"]


# ----------------------------------------------------------------------------- identity


def test_fingerprint_covers_results_not_execution():
    a = load_config(overrides=TINY)
    assert fingerprint(a) == fingerprint(load_config(overrides=[*TINY, "train.threads=2",
                                                                 "train.progress=true",
                                                                 "eval.batch_size=7"]))
    assert fingerprint(a) != fingerprint(load_config(overrides=[*TINY, "train.lr=0.01"]))
    # method defaults are filled in: naming a default explicitly is the same run
    assert fingerprint(a) == fingerprint(load_config(
        overrides=[*TINY, "method.params.temperature=0.05"]))
    assert fingerprint(a) != fingerprint(load_config(
        overrides=[*TINY, "method.params.temperature=0.1"]))
    assert run_id(a) != run_id(load_config(overrides=[*TINY, "train.lr=0.01"]))


def test_changed_config_trains_anew_and_records_say_the_truth(tiny_glyphs, tmp_path):
    """`run k.yaml --out X` then the same with another lr: two runs, each record states the lr
    it was trained with, and the metrics differ."""
    recs = []
    for lr in ("0.002", "0.01"):
        cfg = load_config(overrides=[*TINY, "train.epochs=1", f"train.lr={lr}"])
        recs.append(run_conventional(cfg, tmp_path / run_id(cfg), dataset=tiny_glyphs))
    assert recs[0]["run_id"] != recs[1]["run_id"]
    on_disk = [json.loads((tmp_path / r["run_id"] / "record.json").read_text()) for r in recs]
    assert [r["config"]["train"]["lr"] for r in on_disk] == [0.002, 0.01]
    assert on_disk[0]["best"]["metrics"] != on_disk[1]["best"]["metrics"]
    assert on_disk[1]["fingerprint"] == fingerprint(load_config(
        overrides=[*TINY, "train.epochs=1", "train.lr=0.01"]))


@pytest.mark.parametrize("method,first,second,needle", [
    ("normsoftmax", ["train.lr=0.002"], ["train.lr=0.01"], "train.lr: 0.002 -> 0.01"),
    ("memvir+normsoftmax", ["method.params.num_steps=2", "method.params.warmup_epochs=0"],
     ["method.params.num_steps=3", "method.params.warmup_epochs=0"],
     "method.params.num_steps: 2 -> 3"),
])
def test_checkpoint_of_other_settings_is_refused(tiny_glyphs, tmp_path, method, first, second,
                                                 needle):
    tr = Split.of_classes(tiny_glyphs, tiny_glyphs.train_classes)
    te = Split.of_classes(tiny_glyphs, tiny_glyphs.test_classes)
    base = [*TINY, f"method.name={method}", "train.epochs=1"]
    fit(load_config(overrides=[*base, *first]), tr, te, run_dir=tmp_path)
    with pytest.raises(UserError, match="other settings") as e:
        fit(load_config(overrides=[*base, *second, "train.epochs=2"]), tr, te, run_dir=tmp_path)
    assert needle in str(e.value) and "another output folder" in str(e.value)
    # continuing the same settings for more epochs is a resume, not a conflict
    res = fit(load_config(overrides=[*base, *first, "train.epochs=2"]), tr, te, run_dir=tmp_path)
    assert res.resumed_from == 1 and len(res.evaluations) == 2


def test_checkpoints_load_with_weights_only(tiny_glyphs, tmp_path):
    tr = Split.of_classes(tiny_glyphs, tiny_glyphs.train_classes)
    te = Split.of_classes(tiny_glyphs, tiny_glyphs.test_classes)
    fit(load_config(overrides=[*TINY, "train.epochs=1", "method.name=ms+das"]), tr, te,
        run_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and "identity" in saved


def test_outputs_respect_the_umask(tiny_glyphs, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        cfg = load_config(overrides=[*TINY, "train.epochs=1"])
        run_conventional(cfg, tmp_path / "r", dataset=tiny_glyphs)
    finally:
        os.umask(old)
    for name in ("record.json", "checkpoint.pt", "best_model.pt"):
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name


def test_a_key_added_at_its_neutral_default_keeps_fingerprints():
    """dataset.cache=none computes what configs without the key computed: runs recorded
    before the key existed keep their fingerprints; another value is another run."""
    from dmlbench.bench import records

    cfg = load_config(overrides=TINY)
    without = json.loads(json.dumps(cfg))
    del without["dataset"]["cache"]
    assert records.identity(without) == records.identity(cfg)
    assert fingerprint(load_config(overrides=[*TINY, "dataset.cache=host"])) != fingerprint(cfg)
