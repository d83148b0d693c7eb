"""Decoded-image cache (`dataset.cache: host | device`): an on-disk dataset decoded once, crops
and normalisation done on the training device for the whole batch.

The file: `bench.data.decoded` (re-exported here).

The crops. Per training batch, the crop boxes are drawn on the CPU from the fit's generator
with torchvision's `RandomResizedCrop.get_params` rules (10 tries of a uniform area fraction in
`scale` and a log-uniform aspect ratio in `ratio`, first one that fits, else the centre
fallback; uniform integer position), one horizontal-flip bit each: a fixed number of draws per
batch, so a resumed fit continues identically. "mlrc" draws on the resized image, as its
pipeline does (the same distribution as the PIL path, and the same pixels up to PIL's
intermediate rounding); "conventional" and "default" draw on the original image's size, as
theirs do, and the box is scaled to the stored image and rounded to whole pixels: the same
crop geometry (to half a stored pixel), but its pixels are resampled from the stored
256-short-side image rather than the full-resolution original (softer where the original crop
had more pixels than the output). Each crop is resized to the output size with PIL's bilinear
filter (support scaled when downsampling): on the CPU with torch's uint8 antialiased
`interpolate` (a port of Pillow's resampler), one image at a time; on CUDA for the whole batch
as two batched matrix products with PIL's filter weights. Eval images are the centre crop of
the stored image: the PIL path's pixels exactly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dmlbench.bench.data.decoded import (CACHE_VERSION, DecodedCache, default_cache_dir,
                                         resized_size, source_digest)
from dmlbench.bench.errors import UserError

__all__ = ["MODES", "TRIES", "DEVICE_SHARE", "CropSpec", "sample_crop_boxes", "scale_boxes",
           "pil_weights", "crops_batched", "loop_crops", "CachedImages",
           # from bench.data.decoded, kept importable from here
           "CACHE_VERSION", "DecodedCache", "default_cache_dir", "resized_size", "source_digest"]

log = logging.getLogger(__name__)

MODES = ("none", "host", "device")
# torchvision RandomResizedCrop.get_params: tries before the centre fallback
TRIES = 10
# a device cache may take this share of the free GPU memory; beyond it, pinned host memory
DEVICE_SHARE = 0.6


@dataclass(frozen=True)
class CropSpec:
    """What a transform preset does, as the cache path needs it."""

    crop: int                       # output side (RandomResizedCrop / CenterCrop size)
    resize: int                     # Resize(side) of the eval path: the stored short side
    crop_on_resized: bool           # train crops drawn on the resized image (mlrc)
    scale: tuple[float, float]
    ratio: tuple[float, float]
    space: str = "RGB"              # input normalisation (bench.models.transforms.InputNorm)
    value_scale: float = 1.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @classmethod
    def of(cls, transforms, image_size: int) -> "CropSpec":
        """The spec of ImageSource's `transforms` (None: `default_file_transforms`)."""
        from dmlbench.bench.models.transforms import IMAGENET_NORM, PaperTransforms

        if transforms is None:
            n = IMAGENET_NORM
            return cls(image_size, int(round(image_size * 256 / 224)), False, (0.08, 1.0),
                       (3 / 4, 4 / 3), n.space, n.scale, n.mean, n.std)
        if isinstance(transforms, PaperTransforms):
            p, n = transforms.preset, transforms.norm
            return cls(image_size, transforms.resize_side(image_size), p.train_resize, p.scale,
                       p.ratio, n.space, n.scale, n.mean, n.std)
        raise UserError(f"dataset.cache needs one of the transform presets (dataset.transforms "
                        f"default, mlrc or conventional), not the transform {transforms!r}; "
                        "set dataset.cache=none")


# ----------------------------------------------------------------------------- crop boxes

def sample_crop_boxes(sizes: np.ndarray, u: np.ndarray, scale: tuple[float, float],
                      ratio: tuple[float, float]) -> np.ndarray:
    """(top, left, h, w) per image of `sizes` (N, 2: height, width) by torchvision's
    `RandomResizedCrop.get_params`, from uniform [0, 1) draws `u` (N, 2 * TRIES + 2)."""
    height, width = sizes[:, 0:1].astype(np.float64), sizes[:, 1:2].astype(np.float64)
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :TRIES])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(lo + (hi - lo) * u[:, TRIES:2 * TRIES])
    w = np.rint(np.sqrt(target * aspect))   # round half to even, as Python's round()
    h = np.rint(np.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(1)
    rows = np.arange(len(sizes))
    h, w = h[rows, first], w[rows, first]
    found = ok[rows, first]
    H, W = height[:, 0], width[:, 0]
    # the centre fallback
    in_ratio = W / H
    fw = np.where(in_ratio < min(ratio), W, np.where(in_ratio > max(ratio),
                                                     np.rint(H * max(ratio)), W))
    fh = np.where(in_ratio < min(ratio), np.rint(W / min(ratio)), H)
    h, w = np.where(found, h, fh), np.where(found, w, fw)
    top = np.minimum(np.floor(u[:, 2 * TRIES] * (H - h + 1)), H - h)
    left = np.minimum(np.floor(u[:, 2 * TRIES + 1] * (W - w + 1)), W - w)
    top = np.where(found, top, (H - h) // 2)
    left = np.where(found, left, (W - w) // 2)
    return np.stack([top, left, h, w], 1).astype(np.int64)


def scale_boxes(boxes: np.ndarray, orig: np.ndarray, resized: np.ndarray) -> np.ndarray:
    """Boxes (top, left, h, w) on images of size `orig` (N, 2) moved to the same images at
    size `resized`, edges rounded to whole pixels (at least one pixel)."""
    f = resized.astype(np.float64) / orig
    t, l_ = np.rint(boxes[:, 0] * f[:, 0]), np.rint(boxes[:, 1] * f[:, 1])
    b, r = np.rint((boxes[:, 0] + boxes[:, 2]) * f[:, 0]), np.rint((boxes[:, 1] + boxes[:, 3])
                                                                   * f[:, 1])
    t = np.minimum(t, resized[:, 0] - 1)
    l_ = np.minimum(l_, resized[:, 1] - 1)
    return np.stack([t, l_, np.maximum(b - t, 1), np.maximum(r - l_, 1)], 1).astype(np.int64)


# ----------------------------------------------------------------------------- resampling

def pil_weights(start: torch.Tensor, length: torch.Tensor, out: int, n: int) -> torch.Tensor:
    """(B, out, n) weights of PIL's bilinear resize of positions [start, start + length) of an
    axis of `n` positions to `out` samples (the filter widened by the downscale factor,
    clamped to the crop and normalised, as Pillow's `precompute_coeffs`)."""
    dev = start.device
    start, length = start.double().view(-1, 1, 1), length.double().view(-1, 1, 1)
    scale = length / out
    fscale = scale.clamp(min=1.0)
    center = (torch.arange(out, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    j = torch.arange(n, device=dev, dtype=torch.float64).view(1, 1, -1) - start
    w = (1 - ((j + 0.5 - center) / fscale).abs()).clamp(min=0)
    w = w * ((j >= 0) & (j < length))
    return (w / w.sum(-1, keepdim=True)).float()


def crops_batched(store: torch.Tensor, offsets: torch.Tensor, boxes: torch.Tensor, out: int,
                  device: torch.device) -> torch.Tensor:
    """(B, 3, out, out) uint8 resized crops in (long, short) axes for boxes (l_top, s_top,
    l_len, s_len) of slabs starting at `offsets` of `store` (T, side, 3): the slabs' rows of
    the crops are gathered (on the store's device), moved to `device`, and resampled with
    PIL's filter as two batched matrix products."""
    l_top, s_top, l_len, s_len = boxes.unbind(1)
    span = int(l_len.max())
    ar = torch.arange(span, device=store.device)
    rows = (offsets + l_top).view(-1, 1) + torch.minimum(ar.view(1, -1), (l_len - 1).view(-1, 1))
    rows = rows.flatten().to(store.device)
    if store.device.type == "cpu":  # host memory: gathered into a pinned batch for CUDA
        x = torch.empty((len(rows), *store.shape[1:]), dtype=torch.uint8,
                        pin_memory=device.type == "cuda")
        torch.index_select(store, 0, rows, out=x)
    else:
        x = torch.index_select(store, 0, rows)
    x = x.to(device, non_blocking=True).view(len(boxes), span, store.shape[1], 3)
    x = x.permute(0, 3, 1, 2).float()                          # (B, 3, span, side)
    b = boxes.to(device)
    wl = pil_weights(torch.zeros_like(b[:, 0]), b[:, 2], out, span)
    ws = pil_weights(b[:, 1], b[:, 3], out, store.shape[1])
    y = wl.unsqueeze(1) @ x @ ws.unsqueeze(1).transpose(-1, -2)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def loop_crops(store: torch.Tensor, offsets: torch.Tensor, boxes: torch.Tensor,
               out: int) -> list[torch.Tensor]:
    """As `crops_batched`, one (3, out, out) image at a time with torch's antialiased bilinear
    `interpolate` on uint8 (on the CPU, Pillow's resampler ported)."""
    res = []
    for o, lt, st, ll, sl in torch.cat([offsets.view(-1, 1), boxes], 1).tolist():
        x = store[o + lt:o + lt + ll, st:st + sl].permute(2, 0, 1).unsqueeze(0)
        if x.device.type != "cpu":  # no uint8 antialiased kernel off the CPU
            x = x.float()
        y = F.interpolate(x, size=(out, out), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        res.append(y if y.dtype == torch.uint8 else y.round().clamp(0, 255).to(torch.uint8))
    return res


# ----------------------------------------------------------------------------- a split

class CachedImages:
    """A split's images from the decoded cache, held on the training device (`device`) or in
    (pinned, with CUDA) host memory (`host`); batches as normalised float tensors."""

    def __init__(self, split, device: torch.device, spec: CropSpec, mode: str, *,
                 num_workers: int = 0, cache_dir: str | None = None,
                 resampler: str = "auto") -> None:
        if mode not in ("host", "device"):
            raise UserError(f"dataset.cache={mode!r}; allowed: host, device (or none)")
        cache = DecodedCache.open_or_build(split.dataset, spec.resize, num_workers=num_workers,
                                           cache_dir=cache_dir)
        self.spec, self.device = spec, device
        idx = split.indices
        self.lengths = cache.lengths[idx]
        self.transposed = cache.transposed[idx]
        self.orig = cache.orig[idx]
        side = spec.resize
        self.resized = np.where(self.transposed[:, None],
                                np.stack([np.full(len(idx), side), self.lengths], 1),
                                np.stack([self.lengths, np.full(len(idx), side)], 1))
        offsets = np.cumsum(self.lengths) - self.lengths
        nbytes = int(self.lengths.sum()) * side * 3
        if mode == "device" and device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            if nbytes > DEVICE_SHARE * free:
                log.warning("dataset.cache=device: the split's %.1f GB of decoded images exceed "
                            "%.0f%% of the GPU's %.1f GB free; streaming them from pinned host "
                            "memory instead", nbytes / 1e9, 100 * DEVICE_SHARE, free / 1e9)
                mode = "host"
        self.mode = mode
        where = device if mode == "device" else torch.device("cpu")
        pin = mode == "host" and device.type == "cuda"
        shape = (int(self.lengths.sum()), side, 3)
        try:
            store = torch.empty(shape, dtype=torch.uint8, device=where, pin_memory=pin)
        except RuntimeError as e:
            if not pin:
                raise
            log.warning("cannot pin %.1f GB of host memory (%s); using pageable memory",
                        nbytes / 1e9, e)
            store = torch.empty(shape, dtype=torch.uint8)
        src = cache.offsets[idx]  # copied in runs of images that are adjacent in the file
        cut = np.flatnonzero(src[1:] != src[:-1] + self.lengths[:-1]) + 1
        for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(idx)].tolist()):
            o, s = int(offsets[a]), int(src[a])
            n = int(offsets[b - 1] + self.lengths[b - 1]) - o
            store[o:o + n].copy_(torch.from_numpy(np.asarray(cache.pixels[s:s + n])))
        self.store = store
        self.offsets = torch.from_numpy(offsets).to(where)
        self.labels = torch.from_numpy(split.labels).to(device)
        if resampler == "auto":
            resampler = "loop" if device.type == "cpu" else "batched"
        self.resampler = resampler
        t = torch.tensor
        self._mean = t(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self._std = t(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        log.info("decoded-image cache: %d images, %.2f GB in %s memory (%s crops)", len(idx),
                 nbytes / 1e9, "device" if mode == "device" else "host", resampler)

    def __len__(self) -> int:
        return len(self.lengths)

    # --------------------------------------------------------------- pixels
    def train_boxes(self, n: int, generator: torch.Generator | None,
                    positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes (top, left, h, w) on the stored images and flip bits for a batch of
        `n` positions, from 2 * TRIES + 3 uniform draws per image of `generator`."""
        u = torch.rand((n, 2 * TRIES + 3), generator=generator, dtype=torch.float64).numpy()
        pos = np.asarray(positions, dtype=np.int64)
        s = self.spec
        if s.crop_on_resized:
            boxes = sample_crop_boxes(self.resized[pos], u[:, :-1], s.scale, s.ratio)
        else:
            boxes = scale_boxes(sample_crop_boxes(self.orig[pos], u[:, :-1], s.scale, s.ratio),
                                self.orig[pos], self.resized[pos])
        return boxes, u[:, -1] < 0.5

    def crops(self, positions: np.ndarray, boxes: np.ndarray, flips: np.ndarray, *,
              normalized: bool = False) -> torch.Tensor:
        """(B, 3, crop, crop) crops of boxes (top, left, h, w) on the stored images, resized to
        the crop size and flipped where `flips`: uint8 RGB, or with `normalized` the trunk's
        input (as `ToNormalizedTensor` makes it)."""
        pos = np.asarray(positions, dtype=np.int64)
        tr = self.transposed[pos]
        # (top, left, h, w) in (y, x) -> (l_top, s_top, l_len, s_len) in the slab's axes
        stored = np.where(tr[:, None], boxes[:, [1, 0, 3, 2]], boxes)
        off = self.offsets[torch.from_numpy(pos).to(self.offsets.device)]
        b = torch.from_numpy(stored).to(self.offsets.device)
        if self.resampler == "loop" and self.store.device.type == self.device.type == "cpu":
            return self._assemble(loop_crops(self.store, off, b, self.spec.crop), tr,
                                  np.asarray(flips, bool), normalized)
        if self.resampler == "loop":
            x = torch.stack(loop_crops(self.store, off, b, self.spec.crop))
        else:
            x = crops_batched(self.store, off, b, self.spec.crop, self.device)
        x = self._orient(x.to(self.device, non_blocking=True), tr, flips)
        return self.normalize(x) if normalized else x

    def center_crops(self, positions: np.ndarray, *, normalized: bool = False) -> torch.Tensor:
        """(B, 3, crop, crop) torchvision CenterCrop of the stored images: uint8 RGB, or with
        `normalized` the trunk's input."""
        pos = np.asarray(positions, dtype=np.int64)
        c, side = self.spec.crop, self.spec.resize
        l0 = np.array([int(round((n - c) / 2.0)) for n in self.lengths[pos].tolist()])
        s0 = int(round((side - c) / 2.0))
        rows = (self.offsets[torch.from_numpy(pos).to(self.offsets.device)]
                + torch.from_numpy(l0).to(self.offsets.device)).view(-1, 1)
        rows = rows + torch.arange(c, device=rows.device).view(1, -1)
        rows = rows.flatten()
        tr, flips = self.transposed[pos], np.zeros(len(pos), bool)
        if self.store.device.type == "cpu":  # for CUDA: gathered into a pinned batch
            x = torch.empty((len(rows), side, 3), dtype=torch.uint8,
                            pin_memory=self.device.type == "cuda")
            torch.index_select(self.store, 0, rows, out=x)
        else:
            x = torch.index_select(self.store, 0, rows)
        x = x.to(self.device, non_blocking=True).view(len(pos), c, side, 3)
        x = x[:, :, s0:s0 + c].permute(0, 3, 1, 2)
        if x.device.type == "cpu":
            return self._assemble(x, tr, flips, normalized)
        x = self._orient(x, tr, flips)
        return self.normalize(x) if normalized else x

    def _assemble(self, images: "torch.Tensor | list[torch.Tensor]", transposed: np.ndarray,
                  flips: np.ndarray, normalized: bool) -> torch.Tensor:
        """CPU: (long, short) -> (y, x), flips and (normalized) channel order and float in one
        strided copy per image, then the normalisation in place."""
        bgr = normalized and self.spec.space == "BGR"
        out = np.empty((len(images), *images[0].shape), np.float32 if normalized else np.uint8)
        for k, img in enumerate(images):
            v = img.numpy()
            if transposed[k]:
                v = v.transpose(0, 2, 1)
            if flips[k]:
                v = v[:, :, ::-1]
            out[k] = v[::-1] if bgr else v
        t = torch.from_numpy(out)
        return self._finish(t) if normalized else t

    def _orient(self, x: torch.Tensor, transposed: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """(long, short) axes -> (y, x); then horizontal flips."""
        tr = torch.from_numpy(transposed).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(tr, x.transpose(-1, -2), x)
        if flips.any():
            fl = torch.from_numpy(np.asarray(flips)).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(fl, x.flip(-1), x)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> the trunk's input, as `ToNormalizedTensor` computes it."""
        x = x.float()
        return self._finish(x.flip(1) if self.spec.space == "BGR" else x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in the trunk's channel order -> its input, in place (the operations
        of `ToNormalizedTensor`, so the values are the same)."""
        if self.spec.value_scale != 255.0:
            x.div_(255.0 / self.spec.value_scale)
        x.sub_(self._mean)
        if any(s != 1.0 for s in self.spec.std):
            x.div_(self._std)
        return x

    # --------------------------------------------------------------- batches
    def train_batch(self, positions: np.ndarray, *, generator: torch.Generator | None = None,
                    part: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random resized crops (+ flips) of `positions[start:stop]` (`part`; default all) and
        labels of all positions; the boxes are drawn for the whole batch."""
        pos = np.asarray(positions, dtype=np.int64)
        boxes, flips = self.train_boxes(len(pos), generator, pos)
        a, b = part or (0, len(pos))
        x = self.crops(pos[a:b], boxes[a:b], flips[a:b], normalized=True)
        return x, self.labels.index_select(0, torch.from_numpy(pos).to(self.labels.device))

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Centre crops of every image, in split order."""
        for s in range(0, len(self), batch_size):
            pos = np.arange(s, min(s + batch_size, len(self)))
            yield self.center_crops(pos, normalized=True), self.labels[s:s + len(pos)]
