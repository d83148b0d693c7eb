"""Synthetic on-disk images for measurements that must not depend on a download: JPEGs of
CUB-200-2011's size distribution, and a scratch decoded-image cache folder."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def synthetic_cub(folder: "str | Path", n: int, seed: int = 0) -> list[str]:
    """`n` JPEGs of CUB's sizes and roughly its file sizes; their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        short = int(rng.integers(300, 501))
        w, h = (500, short) if rng.random() < 0.8 else (short, 500)
        low = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.int16)
        arr = np.clip(smooth + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{k:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


@contextlib.contextmanager
def scratch_dataset_cache() -> Iterator[Path]:
    """A temporary folder whose `cache/` subfolder is the decoded-image cache
    (`DMLBENCH_CACHE`) while the block runs; the variable is restored afterwards."""
    old = os.environ.get("DMLBENCH_CACHE")
    with tempfile.TemporaryDirectory() as d:
        os.environ["DMLBENCH_CACHE"] = os.path.join(d, "cache")
        try:
            yield Path(d)
        finally:
            if old is None:
                os.environ.pop("DMLBENCH_CACHE", None)
            else:
                os.environ["DMLBENCH_CACHE"] = old
