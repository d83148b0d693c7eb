"""The embedded dataset `glyphs`: characters rendered with the TrueType fonts inside matplotlib.

One class per character (Latin incl. accented letters, Greek, Cyrillic, digits, symbols, box
drawing) present in all 16 fonts of the spec (DejaVu Sans / Sans Mono / Serif in four styles
each, STIXGeneral in four styles). Homoglyphs (Latin o / Cyrillic о / Greek ο, A/А/Α, ...) are
merged before the classes are chosen: a character whose clean renders are near-identical to an
earlier kept character's (in every font, or identical in most fonts) is left out. Fine-grained
pairs (e/é/è/ê/ë, i/ï/î, c/ç) stay. Instances vary by font, weight, slant, a random affine and
elastic distortion, stroke width, blur, contrast and noise.

Images are uint8 (N, S, S): a white (bright) glyph on a black (dark) background, S in 32, 48,
64. The build is deterministic, needs nothing outside the installed dependencies, takes seconds,
and is cached as one .npz file under `$DMLBENCH_CACHE` (default `~/.cache/dmlbench`).

One concern, the embedded dataset (fonts -> classes -> instances -> cached file); over 400
lines because homoglyph merging and the distortions must stay beside the build they define.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import tempfile
import time
import unicodedata
import warnings
from functools import lru_cache

import numpy as np

from dmlbench.bench.data import DMLDataset, register_dataset
from dmlbench.bench.errors import UserError

VERSION = 1  # bump when the generated images change for reasons the parameters below miss

# The 16 fonts of the spec; the Display, cm*, STIXNonUni*, STIXSiz*, LastResort files are left out.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
IMAGE_SIZES = (32, 48, 64)
DEFAULT_NUM_CLASSES = 400
MAX_IMAGES_PER_CLASS = 1000
SEED = 20240611

SOURCE_EM = 128          # pixels per em of the master renders, for every image size
PAD = 8                  # empty margin around a master render (room for stroke thickening)
SUPERSAMPLE = 2          # images are drawn at 2x and box-filtered down
FILL = 0.8               # a fitted glyph's longer side, as a fraction of the frame
REF_CHAR = "H"           # glyphs at most as tall as this keep their size relative to it ...
MIN_FIT = 0.5            # ... but are never drawn smaller than this fraction of the fitted size
DEDUP_SIZE = 32          # clean renders for the homoglyph check, whatever the image size
DEDUP_ALL = 0.03         # near-identical in every font: distance below this in all 16 ...
DEDUP_MOST = 0.015       # ... or identical in most fonts: distance below this ...
DEDUP_MIN_FONTS = 10     # ... in at least this many fonts (catches x/х, Г/Γ, ё/ë, Υ/Y)

# Distortion of one instance; every value is drawn uniformly from its range.
DISTORTION = {
    "rotation_deg": (-20.0, 20.0),
    "shear": (-0.3, 0.3),
    "scale": (0.75, 1.1),
    "log_aspect": (-0.15, 0.15),     # x / y stretch, as log of the ratio
    "translate": (-0.1, 0.1),        # fraction of the frame, per axis
    "elastic": (0.0, 0.04),          # s.d. of a smooth random displacement, fraction of the frame
    "stroke_px": (-2, 6),            # max (>0) / min (<0) filter width - 1, in master pixels
    "blur_px": (0.0, 1.0),           # Gaussian blur s.d., in output pixels
    "foreground": (140.0, 255.0),
    "background": (0.0, 70.0),
    "noise_sigma": (10.0, 20.0),
}
ELASTIC_GRID = 4         # control points per axis of the displacement field


def font_dir() -> str:
    """The directory of the TrueType fonts that ship inside matplotlib."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_paths() -> list[str]:
    """Paths of the 16 fonts used, in FONT_FILES order."""
    d = font_dir()
    paths = [os.path.join(d, f) for f in FONT_FILES]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"glyphs: matplotlib's font directory {d} lacks {', '.join(missing)}; "
                        "reinstall matplotlib")
    return paths


def candidate_code_points() -> list[int]:
    """Code points in every font's cmap that are letters, numbers or symbols (L*, N*, S*)."""
    from fontTools.ttLib import TTFont

    common: set[int] | None = None
    for p in font_paths():
        with TTFont(p, lazy=True) as f:
            cmap = set(f.getBestCmap())
        common = cmap if common is None else common & cmap
    return sorted(c for c in common if unicodedata.category(chr(c))[0] in "LNS")


# ----------------------------------------------------------------------------- rendering

class _Master:
    """A glyph rendered once at SOURCE_EM pixels per em, cropped to its ink with a PAD margin."""

    __slots__ = ("bitmap", "height", "width")

    def __init__(self, bitmap: np.ndarray, height: int, width: int) -> None:
        self.bitmap, self.height, self.width = bitmap, height, width


def _render_master(font, ch: str) -> _Master | None:
    font.set_text(ch, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image())
    rows = np.flatnonzero(img.max(axis=1))
    cols = np.flatnonzero(img.max(axis=0))
    if len(rows) == 0:
        return None
    ink = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = ink.shape
    bitmap = np.zeros((h + 2 * PAD, w + 2 * PAD), np.uint8)
    bitmap[PAD:PAD + h, PAD:PAD + w] = ink
    return _Master(bitmap, h, w)


def _render_masters(code_points: list[int]) -> tuple[list[list[_Master | None]], list[float]]:
    """Master renders [font][i] of `code_points`, and each font's REF_CHAR ink height."""
    from matplotlib.ft2font import FT2Font

    masters, ref_heights = [], []
    for p in font_paths():
        font = FT2Font(p)
        font.set_size(SOURCE_EM, 72)
        masters.append([_render_master(font, chr(c)) for c in code_points])
        ref_heights.append(float(_render_master(font, REF_CHAR).height))
    return masters, ref_heights


@lru_cache(maxsize=8)
def _smooth_basis(n: int, g: int) -> np.ndarray:
    """(n, g) weights that interpolate g evenly spaced control values smoothly over n pixels."""
    x = (np.arange(n) + 0.5) / n * g - 0.5
    w = np.exp(-0.5 * (x[:, None] - np.arange(g)[None, :]) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _draw(m: _Master, ref_height: float, size: int, *, rotation: float = 0.0, shear: float = 0.0,
          scale: float = 1.0, log_aspect: float = 0.0, translate: tuple[float, float] = (0.0, 0.0),
          stroke_px: int = 0, displacement: np.ndarray | None = None, blur_px: float = 0.0
          ) -> np.ndarray:
    """Ink coverage in [0, 1], shape (size, size): the glyph centred, scaled and distorted.

    `displacement`: (2, g, g) random offsets of a g x g control grid, in fractions of the frame,
    interpolated smoothly over the frame (an elastic distortion).
    """
    from scipy.ndimage import (affine_transform, gaussian_filter, map_coordinates, maximum_filter,
                               minimum_filter)

    out = size * SUPERSAMPLE
    fit = FILL * out / max(m.height, m.width)
    k = min(fit, max(FILL * out / ref_height, MIN_FIT * fit))  # output px per master px
    src = m.bitmap
    if stroke_px > 0:
        src = maximum_filter(src, size=stroke_px + 1)
    elif stroke_px < 0:
        src = minimum_filter(src, size=1 - stroke_px)
    src = src.astype(np.float32) * np.float32(1 / 255)
    # forward map (row, col): rotate . shear . stretch, times k; invert it to sample the master
    c, s = np.cos(np.deg2rad(rotation)), np.sin(np.deg2rad(rotation))
    a = np.exp(log_aspect / 2)
    fwd = (np.array([[c, -s], [s, c]]) @ np.array([[1.0, 0.0], [shear, 1.0]])
           @ np.diag([scale / a, scale * a])) * k
    inv = np.linalg.inv(fwd)
    centre_src = np.array([PAD + (m.height - 1) / 2, PAD + (m.width - 1) / 2])
    centre_out = np.full(2, (out - 1) / 2) + np.asarray(translate) * out
    offset = centre_src - inv @ centre_out
    if displacement is None:
        img = affine_transform(src, inv, offset, output_shape=(out, out), order=1,
                               mode="constant", cval=0.0, prefilter=False)
    else:
        b = _smooth_basis(out, displacement.shape[-1])
        field = (b @ displacement @ b.T) * out  # (2, out, out), in output pixels
        coords = np.indices((out, out), dtype=np.float64) + field
        coords = np.tensordot(inv, coords, axes=1) + offset[:, None, None]
        img = map_coordinates(src, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    if blur_px > 0:
        img = gaussian_filter(img, blur_px * SUPERSAMPLE, mode="constant", truncate=3.0)
    return img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- classes

def _dedup(masters: list[list[_Master | None]], ref_heights: list[float]
           ) -> tuple[list[int], dict[int, int]]:
    """Indices kept (first in order wins) and dropped index -> the kept index it duplicates (-1).

    An index is dropped when it has no ink in some font, or when its clean renders are
    near-identical to a kept one's: within DEDUP_ALL in every font, or within DEDUP_MOST in at
    least DEDUP_MIN_FONTS fonts (homoglyphs that only a few fonts draw differently). The
    distance of two renders a, b is 1 - 2<a,b> / (|a|^2 + |b|^2): 0 identical, 1 no overlap.
    """
    n = len(masters[0])
    inked = [i for i in range(n) if all(fm[i] is not None for fm in masters)]
    dist = render_distances([[fm[i] for i in inked] for fm in masters], ref_heights)
    dup = (dist.max(axis=0) < DEDUP_ALL) | ((dist < DEDUP_MOST).sum(axis=0) >= DEDUP_MIN_FONTS)
    kept_pos: list[int] = []
    dropped = dict.fromkeys(sorted(set(range(n)) - set(inked)), -1)
    for p in range(len(inked)):
        hits = [q for q in kept_pos if dup[p, q]]
        if hits:
            dropped[inked[p]] = inked[hits[0]]
        else:
            kept_pos.append(p)
    return [inked[p] for p in kept_pos], dropped


def render_distances(masters: list[list[_Master]], ref_heights: list[float]) -> np.ndarray:
    """(fonts, n, n) distances between the clean DEDUP_SIZE renders of n glyphs, per font."""
    out = []
    for fm, ref in zip(masters, ref_heights):
        x = np.stack([_draw(m, ref, DEDUP_SIZE).ravel() for m in fm]).astype(np.float32)
        gram = x @ x.T
        sq = np.diag(gram)
        out.append(1 - 2 * gram / np.maximum(sq[:, None] + sq[None, :], 1e-6))
    return np.stack(out)


@lru_cache(maxsize=1)
def _distinct() -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    cps = candidate_code_points()
    masters, refs = _render_masters(cps)
    kept, dropped = _dedup(masters, refs)
    return tuple(cps[i] for i in kept), tuple((cps[a], cps[b] if b >= 0 else -1)
                                              for a, b in sorted(dropped.items()))


def distinct_code_points() -> tuple[int, ...]:
    """All code points that make a class (homoglyphs removed), in code-point order."""
    return _distinct()[0]


def dropped_code_points() -> dict[int, int]:
    """Each candidate code point left out -> the kept code point it duplicates (-1: no ink)."""
    return dict(_distinct()[1])


def class_order(code_points: "list[int] | tuple[int, ...]") -> list[int]:
    """The fixed, script-mixed order of the classes: a seeded permutation of `code_points`."""
    perm = np.random.default_rng(SEED).permutation(len(code_points))
    return [code_points[i] for i in perm]


def class_name(cp: int) -> str:
    return f"U+{cp:04X} {chr(cp)}"


# ----------------------------------------------------------------------------- build

def _check_options(image_size, images_per_class, num_classes) -> None:
    def is_int(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not is_int(image_size) or image_size not in IMAGE_SIZES:
        raise UserError(f"glyphs: image_size={image_size!r} is not supported; "
                        f"allowed: {', '.join(map(str, IMAGE_SIZES))}")
    if not is_int(images_per_class) or not 2 <= images_per_class <= MAX_IMAGES_PER_CLASS:
        raise UserError(f"glyphs: images_per_class={images_per_class!r} is out of range; "
                        f"allowed: an integer from 2 to {MAX_IMAGES_PER_CLASS}")
    if num_classes is not None and (not is_int(num_classes) or num_classes < 2):
        raise UserError(f"glyphs: num_classes={num_classes!r} is out of range; allowed: an "
                        f"integer of at least 2 (default {DEFAULT_NUM_CLASSES}), or none")


def build_glyphs(image_size: int = 32, images_per_class: int = 24,
                 num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Build the dataset's arrays (no cache).

    Returns images (N, S, S) uint8 (white glyph on black), labels (N,) int64 in 0..C-1 ordered
    by class, code_points (C,) int64 ascending (class id -> code point), font_index (N,) int64
    into FONT_FILES, train_classes and test_classes (sorted class ids). The first classes of
    `class_order` are chosen, so a smaller `num_classes` gives a subset; a class's instances
    do not depend on `num_classes`, and a smaller `images_per_class` gives their prefix.
    """
    _check_options(image_size, images_per_class, num_classes)
    cps = distinct_code_points()
    if num_classes is None:
        num_classes = min(DEFAULT_NUM_CLASSES, len(cps))
    if num_classes > len(cps):
        raise UserError(f"glyphs: num_classes={num_classes} is more than the {len(cps)} distinct "
                        f"glyph classes; allowed: an integer from 2 to {len(cps)}")
    chosen = class_order(cps)[:num_classes]
    code_points = np.array(sorted(chosen), np.int64)
    class_id = {int(cp): i for i, cp in enumerate(code_points)}
    n_train = (num_classes + 1) // 2
    train = np.sort([class_id[cp] for cp in chosen[:n_train]]).astype(np.int64)
    test = np.sort([class_id[cp] for cp in chosen[n_train:]]).astype(np.int64)
    masters, refs = _render_masters([int(cp) for cp in code_points])

    n_fonts = len(FONT_FILES)
    images = np.empty((num_classes * images_per_class, image_size, image_size), np.uint8)
    font_index = np.empty(num_classes * images_per_class, np.int64)
    for c, cp in enumerate(code_points):
        # one stream for the glyph's geometry (the same at every image size), one for the noise
        rng = np.random.default_rng([SEED, int(cp)])
        noise_rng = np.random.default_rng([SEED, int(cp), image_size])

        def u(key: str) -> float:
            return float(rng.uniform(*DISTORTION[key]))

        for i in range(images_per_class):
            if i % n_fonts == 0:
                fonts = rng.permutation(n_fonts)  # every font once per n_fonts instances
            f = int(fonts[i % n_fonts])
            lo, hi = DISTORTION["stroke_px"]
            params = dict(rotation=u("rotation_deg"), shear=u("shear"), scale=u("scale"),
                          log_aspect=u("log_aspect"), translate=(u("translate"), u("translate")),
                          stroke_px=int(rng.integers(lo, hi + 1)))
            params["displacement"] = u("elastic") * rng.standard_normal(
                (2, ELASTIC_GRID, ELASTIC_GRID))
            params["blur_px"] = u("blur_px")
            fg, bg, sigma = u("foreground"), u("background"), u("noise_sigma")
            ink = _draw(masters[f][c], refs[f], image_size, **params)
            img = bg + (fg - bg) * ink + sigma * noise_rng.standard_normal(ink.shape)
            n = c * images_per_class + i
            images[n] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
            font_index[n] = f
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    return {"images": images, "labels": labels, "code_points": code_points,
            "font_index": font_index, "train_classes": train, "test_classes": test}


# ----------------------------------------------------------------------------- cache

def generation_params(image_size: int, images_per_class: int, num_classes: int | None) -> dict:
    """Everything the arrays depend on; its hash names the cache file."""
    import matplotlib
    import scipy
    from matplotlib import ft2font

    return {
        "version": VERSION, "image_size": image_size, "images_per_class": images_per_class,
        "num_classes": num_classes, "default_num_classes": DEFAULT_NUM_CLASSES, "seed": SEED,
        "fonts": {f: os.path.getsize(p) for f, p in zip(FONT_FILES, font_paths())},
        "source_em": SOURCE_EM, "pad": PAD,
        "supersample": SUPERSAMPLE, "fill": FILL,
        "ref_char": REF_CHAR, "min_fit": MIN_FIT, "dedup_size": DEDUP_SIZE,
        "dedup": [DEDUP_ALL, DEDUP_MOST, DEDUP_MIN_FONTS], "distortion": DISTORTION,
        "elastic_grid": ELASTIC_GRID,
        "matplotlib": matplotlib.__version__, "freetype": ft2font.__freetype_version__,
        "numpy": np.__version__, "scipy": scipy.__version__, "unicode": unicodedata.unidata_version,
    }


def cache_path(cache_dir: str, params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"glyphs-v{VERSION}-{params['image_size']}px-{digest}.npz")


def default_cache_dir() -> str:
    return os.environ.get("DMLBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "dmlbench")


_KEYS = ("images", "labels", "code_points", "font_index", "train_classes", "test_classes")


def _read_cache(path: str, params_json: str, image_size: int) -> dict[str, np.ndarray]:
    """The arrays of a valid cache file; raises on anything missing, inconsistent or stale."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["params"]) != params_json:
            raise ValueError("generation parameters differ")
        arrays = {k: z[k] for k in _KEYS}
    im, lab = arrays["images"], arrays["labels"]
    c = len(arrays["code_points"])
    split = np.concatenate([arrays["train_classes"], arrays["test_classes"]])
    if (im.dtype != np.uint8 or im.ndim != 3 or im.shape[1:] != (image_size, image_size)
            or lab.shape != (len(im),) or arrays["font_index"].shape != (len(im),)
            or (len(lab) and not 0 <= lab.min() <= lab.max() < c)
            or not np.array_equal(np.sort(split), np.arange(c))):
        raise ValueError("inconsistent arrays")
    return arrays


def _write_cache(path: str, params_json: str, arrays: dict[str, np.ndarray]) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, params=np.array(params_json), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@register_dataset("glyphs")
def load_glyphs(root: str | None = None, *, image_size: int = 32, images_per_class: int = 24,
                num_classes: int | None = None, cache_dir: str | None = None) -> DMLDataset:
    """The `glyphs` dataset, built on first use and cached.

    The cache directory is `cache_dir`, else `root`, else $DMLBENCH_CACHE, else
    ~/.cache/dmlbench. A missing, corrupt or stale cache file is rebuilt.
    """
    _check_options(image_size, images_per_class, num_classes)
    directory = os.path.expanduser(os.fspath(cache_dir or root or default_cache_dir()))
    params = generation_params(image_size, images_per_class, num_classes)
    params_json = json.dumps(params, sort_keys=True)
    path = cache_path(directory, params)

    arrays, build_seconds = None, None
    if os.path.exists(path):
        try:
            arrays = _read_cache(path, params_json, image_size)
        except Exception as e:  # corrupt, truncated or stale: rebuild
            warnings.warn(f"glyphs: cache file {path} is unreadable ({type(e).__name__}: {e}); "
                          "rebuilding it", stacklevel=2)
    if arrays is None:
        t0 = time.perf_counter()
        arrays = build_glyphs(image_size, images_per_class, num_classes)
        build_seconds = time.perf_counter() - t0
        try:
            _write_cache(path, params_json, arrays)
        except OSError as e:
            warnings.warn(f"glyphs: cannot write cache file {path} ({e}); using the build "
                          "in memory", stacklevel=2)
            path = None

    code_points = [int(c) for c in arrays["code_points"]]
    return DMLDataset(
        name="glyphs",
        labels=arrays["labels"],
        class_names=[class_name(c) for c in code_points],
        train_classes=arrays["train_classes"],
        test_classes=arrays["test_classes"],
        images=arrays["images"],
        meta={"version": VERSION, "image_size": image_size, "images_per_class": images_per_class,
              "foreground": "white", "background": "black", "fonts": list(FONT_FILES),
              "font_index": arrays["font_index"], "code_points": code_points,
              "cache_file": path, "build_seconds": build_seconds, "params": params},
    )
