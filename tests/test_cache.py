"""The decoded-image cache (`dataset.cache`): crop parameters distributed as torchvision's
`RandomResizedCrop.get_params`, crops and eval images against the PIL path, the cache file's
key, rebuild and concurrent writers, and an exactly resumable cached fit."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dmlbench.bench.config import load_config
from dmlbench.bench.data import DMLDataset
from dmlbench.bench.data import cache as C
from dmlbench.bench.data import decoded as D
from dmlbench.bench.data.loading import ImageSource, Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.models import build_model
from dmlbench.bench.models.transforms import PRESETS, make_transforms

pytestmark = pytest.mark.usefixtures("one_thread")

# (width, height): landscape, portrait, square, and one far outside the ratio range
SIZES = [(150, 100), (96, 140), (120, 120), (200, 56), (131, 97), (88, 121)]


def _images(folder: Path, sizes=SIZES, repeat: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (w, h) in enumerate(sizes * repeat):
        low = rng.integers(0, 256, (h // 12 + 2, w // 12 + 2, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.int16)
        arr = np.clip(smooth + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{k:03d}.jpg"
        Image.fromarray(arr).save(p, quality=92)
        paths.append(str(p))
    return paths


@pytest.fixture
def dataset(tmp_path, monkeypatch) -> DMLDataset:
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    paths = _images(tmp_path / "img")
    n = len(paths)
    return DMLDataset("toy", np.arange(n) % 4, list("abcd"), np.array([0, 1]),
                      np.array([2, 3]), paths=paths)


def _source(ds, preset, trunk="bninception", size=64, cache="device", **kw) -> ImageSource:
    tr = None if preset == "default" else make_transforms(preset, trunk)
    return ImageSource(Split(ds, np.arange(len(ds))), torch.device("cpu"), image_size=size,
                       transforms=tr, cache=cache, **kw)


# ----------------------------------------------------------------------------- config

def test_config_key():
    assert load_config()["dataset"]["cache"] == "none"
    assert load_config(overrides=["dataset.cache=host"])["dataset"]["cache"] == "host"
    with pytest.raises(UserError, match=r"dataset.cache='gpu'; allowed: one of none, host, "
                                        r"device"):
        load_config(overrides=["dataset.cache=gpu"])


def test_custom_transform_is_refused(dataset):
    with pytest.raises(UserError, match="dataset.cache needs one of the transform presets"):
        ImageSource(Split(dataset, np.arange(4)), torch.device("cpu"), image_size=32,
                    transforms=lambda size, train: T.ToTensor(), cache="device")


# ----------------------------------------------------------------------------- crop boxes

N_DRAWS = 6000


def _stats(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T.astype(np.float64)
    return {"area": h * w / (height * width), "log_aspect": np.log(w / h),
            "cy": (top + h / 2) / height, "cx": (left + w / 2) / width}


def _torchvision_boxes(height: int, width: int, scale, ratio, n: int) -> np.ndarray:
    torch.manual_seed(0)
    img = torch.empty(1, height, width, dtype=torch.uint8)
    return np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
                     for _ in range(n)])


def _ours(height: int, width: int, scale, ratio, n: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((n, 2 * C.TRIES + 2), generator=g, dtype=torch.float64).numpy()
    return C.sample_crop_boxes(np.tile([height, width], (n, 1)), u, scale, ratio)


def _differences(a: dict, b: dict) -> list[str]:
    """The statistics whose two samples differ beyond sampling error: Kolmogorov-Smirnov
    distance above its 1e-4 critical value, or means more than 4.5 standard errors apart."""
    n, m = len(a["area"]), len(b["area"])
    crit = np.sqrt(-0.5 * np.log(1e-4 / 2)) * np.sqrt((n + m) / (n * m))
    out = []
    for k in a:
        d = ks_2samp(a[k], b[k]).statistic
        se = np.sqrt(a[k].var() / n + b[k].var() / m)
        if d > crit or abs(a[k].mean() - b[k].mean()) > 4.5 * se + 1e-12:
            out.append(f"{k}: KS {d:.3f} (crit {crit:.3f}), means {a[k].mean():.4f} vs "
                       f"{b[k].mean():.4f}")
    return out


@pytest.mark.parametrize("preset,hw", [
    # mlrc draws on the Resize(256) image: CUB-like resized sizes, one beyond the ratio range
    ("mlrc", (256, 341)), ("mlrc", (341, 256)), ("mlrc", (256, 256)), ("mlrc", (256, 914)),
    # conventional draws on the original image
    ("conventional", (375, 500)), ("conventional", (500, 333)), ("conventional", (56, 200))])
def test_crop_boxes_distributed_as_torchvision_get_params(preset, hw):
    """Area fraction, log aspect ratio and crop centre: quantiles (KS) and means of our draws
    equal torchvision's `RandomResizedCrop.get_params` within sampling error on the same image
    size, fallback included; a sampler with another scale range is told apart."""
    p = PRESETS[preset]
    h, w = hw
    theirs = _stats(_torchvision_boxes(h, w, p.scale, p.ratio, N_DRAWS), h, w)
    ours_b = _ours(h, w, p.scale, p.ratio, N_DRAWS)
    assert (ours_b[:, 2] <= h).all() and (ours_b[:, 3] <= w).all()
    assert (ours_b[:, :2] >= 0).all() and (ours_b[:, 0] + ours_b[:, 2] <= h).all()
    assert (ours_b[:, 1] + ours_b[:, 3] <= w).all()
    assert _differences(_stats(ours_b, h, w), theirs) == []
    # the check has power: a scale range that differs as the two presets' do is detected
    wrong = (0.16, 1.0) if p.scale[0] < 0.1 else (0.08, 1.0)
    assert _differences(_stats(_ours(h, w, wrong, p.ratio, N_DRAWS), h, w), theirs)


@pytest.mark.parametrize("hw", [(100, 400), (400, 100), (60, 200)])
def test_fallback_is_torchvision_centre_crop(hw):
    """An image whose aspect is outside the ratio range at area fraction 1: every try is
    rejected, and the box is get_params' centre fallback."""
    h, w = hw
    theirs = _torchvision_boxes(h, w, (1.0, 1.0), (0.75, 1.33), 20)
    ours = _ours(h, w, (1.0, 1.0), (0.75, 1.33), 20)
    assert (theirs == theirs[0]).all() and (ours == theirs).all()
    assert (theirs[0, 2] == h) != (theirs[0, 3] == w)


# ----------------------------------------------------------------------------- pixels

def _pil_train_crop(path: str, preset: str, box, flip: bool, size: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    if PRESETS[preset].train_resize:
        im = T.Resize(int(round(PRESETS[preset].resize * size / PRESETS[preset].crop)))(im)
    t, l_, h, w = (int(v) for v in box)
    out = TF.resized_crop(im, t, l_, h, w, [size, size])
    return TF.hflip(out) if flip else out


@pytest.mark.parametrize("resampler", ["loop", "batched"])
def test_mlrc_train_crops_equal_pil_at_the_same_boxes(dataset, resampler):
    """At the boxes and flips drawn from the generator, the cached crops equal the PIL path's
    (Resize -> crop -> PIL bilinear resize -> flip -> BGR minus means) within one grey level:
    the resize arithmetic differs (Pillow's fixed-point two passes, torch's port of it or
    the float matrix products of the CUDA path)."""
    src = _source(dataset, "mlrc", size=64)
    ci = src.cached
    ci.resampler = resampler
    pos = np.arange(len(ci))
    g = torch.Generator().manual_seed(3)
    x, y = ci.train_batch(pos, generator=g)
    boxes, flips = ci.train_boxes(len(pos), torch.Generator().manual_seed(3), pos)
    norm = make_transforms("mlrc", "bninception")(64, False).transforms[-1]
    want = torch.stack([norm(_pil_train_crop(p, "mlrc", b, f, 64))
                        for p, b, f in zip(dataset.paths, boxes, flips)])
    d = (x - want).abs()
    assert x.shape == want.shape == (len(pos), 3, 64, 64)
    assert float(d.max()) <= 1.0 and float((d > 0).float().mean()) < 0.25
    assert y.tolist() == src.split.labels.tolist()
    assert flips.any() and not flips.all()
    # the mirrored crops are far away: the comparison can fail
    mirrored = torch.stack([norm(_pil_train_crop(p, "mlrc", b, not f, 64))
                            for p, b, f in zip(dataset.paths, boxes, flips)])
    assert float((x - mirrored).abs().mean()) > 10 * max(float(d.mean()), 0.1)


def test_part_of_a_batch_and_host_mode(dataset):
    """A data-parallel rank's rows (`part`) equal those rows of the whole batch, labels of all
    rows; host memory gives the same batches as device memory."""
    dev, host = _source(dataset, "mlrc"), _source(dataset, "mlrc", cache="host")
    assert host.cached.mode == "host"
    pos = np.array([5, 1, 7, 3, 11, 0])
    full, yf = dev.cached.train_batch(pos, generator=torch.Generator().manual_seed(1))
    part, yp = dev.cached.train_batch(pos, generator=torch.Generator().manual_seed(1),
                                      part=(2, 5))
    hx, hy = host.cached.train_batch(pos, generator=torch.Generator().manual_seed(1))
    assert torch.equal(part, full[2:5]) and torch.equal(yp, yf) and len(yf) == 6
    assert torch.equal(hx, full) and torch.equal(hy, yf)


def test_conventional_crops_are_of_the_same_region(dataset):
    """"conventional" draws its boxes on the original image (as torchvision does) and takes
    the pixels from the stored Resize(256) image: same region and orientation as the PIL crop
    of the original at that box, a little softer (the measured difference is bounded here)."""
    size = 64
    src = _source(dataset, "conventional", size=size)
    ci = src.cached
    pos = np.arange(len(ci))
    g = torch.Generator().manual_seed(5)
    u = torch.rand((len(pos), 2 * C.TRIES + 3), generator=g, dtype=torch.float64).numpy()
    spec = ci.spec
    orig_boxes = C.sample_crop_boxes(ci.orig, u[:, :-1], spec.scale, spec.ratio)
    flips = u[:, -1] < 0.5
    boxes, fl = ci.train_boxes(len(pos), torch.Generator().manual_seed(5), pos)
    assert (fl == flips).all()
    assert (boxes == C.scale_boxes(orig_boxes, ci.orig, ci.resized)).all()
    x = ci.crops(pos, boxes, flips).int()
    want = torch.stack([torch.from_numpy(np.array(_pil_train_crop(p, "conventional", b, f,
                                                                     size))).permute(2, 0, 1)
                        for p, b, f in zip(dataset.paths, orig_boxes, flips)]).int()
    other = want.flip(-1)  # the same crops mirrored
    d, d_other = (x - want).abs().float().mean(), (x - other).abs().float().mean()
    assert float(d) < 6 and float(d_other) > 3 * float(d)


@pytest.mark.parametrize("preset,trunk", [("mlrc", "bninception"),
                                          ("conventional", "resnet50"), ("default", "")])
def test_eval_batches_and_embeddings_equal_pil_path(dataset, preset, trunk):
    """Eval images are the PIL path's exactly (the cache stores the same Resize; the centre
    crop takes its pixels), so a random-weight trunk's embeddings are equal too: the measured
    difference is 0."""
    pil = _source(dataset, preset, trunk=trunk or "smallcnn", size=48, cache="none")
    cached = _source(dataset, preset, trunk=trunk or "smallcnn", size=48)
    (a, la), = pil.eval_batches(64)
    (b, lb), = cached.eval_batches(64)
    assert a.shape == b.shape == (len(dataset), 3, 48, 48)
    assert torch.equal(a, b) and torch.equal(la, lb)
    torch.manual_seed(0)
    model = build_model(load_config(overrides=["model.width=4"])["model"], 3).eval()
    assert torch.equal(model.embed(a), model.embed(b))
    batched = [x for x, _ in cached.eval_batches(5)]
    assert torch.equal(torch.cat(batched), b)


def test_a_subset_split_in_any_order(dataset):
    """A split of scattered images (copied from the file in runs of adjacent ones) gives the
    PIL path's eval images in the split's order."""
    split = Split(dataset, np.array([7, 2, 3, 4, 11, 0]))
    tr = make_transforms("mlrc", "bninception")
    pil = ImageSource(split, torch.device("cpu"), image_size=40, transforms=tr)
    cached = ImageSource(split, torch.device("cpu"), image_size=40, transforms=tr,
                         cache="host")
    (a, la), = pil.eval_batches(16)
    (b, lb), = cached.eval_batches(16)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_unwritable_cache_folder_is_one_clear_error(dataset, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "file" / "sub"))
    with pytest.raises(UserError, match="cannot create the image cache folder .* "
                                        "dataset.cache=none"):
        _source(dataset, "mlrc")


# ----------------------------------------------------------------------------- the file

def test_cache_is_reused_and_decoded_again_when_sources_change(dataset, monkeypatch, caplog):
    calls = []
    real = D._build
    monkeypatch.setattr(D, "_build", lambda *a: (calls.append(a[3]), real(*a)))
    rng = torch.get_rng_state()
    _source(dataset, "mlrc")
    assert torch.equal(torch.get_rng_state(), rng)  # decoding draws nothing from it
    _source(dataset, "mlrc", trunk="resnet50")             # same Resize side: same file
    assert len(calls) == 1
    folder = Path(calls[0])
    assert folder.parent == Path(os.environ["DMLBENCH_CACHE"]) / "decoded"
    assert sorted(p.name for p in folder.iterdir()) == ["index.npz", "pixels.u8"]
    _source(dataset, "mlrc", size=32)                      # another side: another file
    assert len(calls) == 2
    # a changed source file (mtime) is decoded again, into a new folder
    st = os.stat(dataset.paths[3])
    os.utime(dataset.paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    _source(dataset, "mlrc")
    assert len(calls) == 3 and calls[2] != calls[0]
    # a truncated pixel file is decoded again, in place
    pix = Path(calls[2]) / "pixels.u8"
    with open(pix, "r+b") as f:
        f.truncate(pix.stat().st_size - 7)
    with caplog.at_level("WARNING", logger="dmlbench.bench.data.cache"):
        src = _source(dataset, "mlrc")
    assert len(calls) == 4 and calls[3] == calls[2] and "unreadable" in caplog.text
    assert (pix.stat().st_size == 3 * 72 * src.cached.lengths.sum())
    assert not [p for p in folder.parent.iterdir() if p.name.endswith((".tmp", ".stale"))]


def _writer(paths: list[str], cache_dir: str, locking: str, barrier) -> None:
    """A forked process: decode `paths` into `cache_dir` once the other one is ready too."""
    if locking == "nolock":
        D._locked = lambda path: contextlib.nullcontext()
    ds = DMLDataset("toy", np.zeros(len(paths), int), ["a"], np.array([0]), np.array([0]),
                    paths=paths)
    barrier.wait(timeout=60)
    c = C.DecodedCache.open_or_build(ds, 72, cache_dir=cache_dir)
    os._exit(0 if c.nbytes == 3 * 72 * int(c.lengths.sum()) else 3)


@pytest.mark.parametrize("locking", ["lock", "nolock"])
def test_two_processes_decoding_at_once(tmp_path, locking):
    """Two processes decode one dataset at the same moment (with the lock: one waits; without
    it, as on a file system without flock: both write, the rename keeps one): one valid
    cache, no temporary folder left, the same pixels as PIL's Resize."""
    import multiprocessing as mp

    paths = _images(tmp_path / "img", repeat=4)
    cache_dir = str(tmp_path / "cache")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(paths, cache_dir, locking, barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    ds = DMLDataset("toy", np.zeros(len(paths), int), ["a"], np.array([0]), np.array([0]),
                    paths=paths)
    c = C.DecodedCache.open_or_build(ds, 72, cache_dir=cache_dir)
    left = [p.name for p in Path(cache_dir).iterdir() if not p.name.endswith(".lock")]
    assert left == [Path(c.folder).name]
    for k in range(len(paths)):
        im = np.asarray(T.Resize(72)(Image.open(paths[k]).convert("RGB")))
        slab = np.asarray(c.pixels[c.offsets[k]:c.offsets[k] + c.lengths[k]])
        assert np.array_equal(slab.transpose(1, 0, 2) if c.transposed[k] else slab, im)


def test_orphaned_temp_folders_are_removed(dataset, tmp_path):
    """A decode killed mid-way leaves its temp folder; the next decode of that cache removes
    it (its process has ended) and keeps a live process's."""
    import socket
    import subprocess

    side = 72
    digest = C.source_digest(dataset.paths, side)
    final = Path(os.environ["DMLBENCH_CACHE"]) / "decoded" / f"toy-{side}px-v1-{digest}"
    final.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    orphan = Path(f"{final}.{host}.{dead.pid}.abcd1234.tmp")
    live = Path(f"{final}.{host}.{os.getpid()}.abcd1234.tmp")
    for d in (orphan, live):
        d.mkdir()
        (d / "pixels.u8").write_bytes(b"partial")
    _source(dataset, "mlrc")
    assert not orphan.exists() and live.exists() and final.is_dir()


# ----------------------------------------------------------------------------- a fit

def test_cached_fit_resumes_exactly(tmp_path, monkeypatch):
    """A cached fit (crops drawn from the loop's aug generator) cut after 2 epochs and resumed
    equals an uninterrupted one."""
    from dmlbench.bench.data import load_configured
    from dmlbench.bench.data.fixtures import build_fixture_tree
    from dmlbench.bench.train import fit

    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    root = build_fixture_tree(tmp_path / "data", ["cub"])
    over = ["dataset.name=cub", f"dataset.root={root}", "dataset.transforms=mlrc",
            "dataset.image_size=24", "dataset.cache=device", "model.width=4",
            "model.embedding_size=8", "method.name=normsoftmax", "train.batch_size=8",
            "train.iterations_per_epoch=3", "train.progress=false", "train.threads=1",
            "eval.batch_size=16"]
    cfg = lambda epochs: load_config(overrides=[*over, f"train.epochs={epochs}"])  # noqa: E731
    ds = load_configured(cfg(4))
    tr, te = Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)
    full = fit(cfg(4), tr, te, run_dir=tmp_path / "full")
    fit(cfg(2), tr, te, run_dir=tmp_path / "cut")
    resumed = fit(cfg(4), tr, te, run_dir=tmp_path / "cut")
    assert len(resumed.evaluations) == 4
    assert [e["metrics"] for e in resumed.evaluations] == [e["metrics"] for e in
                                                          full.evaluations]
    assert len(list((tmp_path / "cache" / "decoded").glob("cub-*px-*"))) == 1
