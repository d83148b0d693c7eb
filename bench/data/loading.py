"""From a DMLDataset split to batches of (images, labels) tensors.

In-memory datasets (uint8 arrays) are kept as one tensor on the training device; a batch is an
index_select plus a vectorised random affine augmentation, so no DataLoader is needed.
On-disk datasets go through a torch DataLoader with PIL decoding and torchvision transforms.
Batches of training indices come from `BatchPlan`: PML's MPerClassSampler for m >= 2, a
shuffled permutation for m = 1 (the plain loader that classification losses use).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.samplers import MPerClassSampler

from dmlbench.bench.data import DMLDataset
from dmlbench.bench.errors import UserError


class Split:
    """A subset of a dataset: indices into it, with labels remapped to 0..C-1 (sorted)."""

    def __init__(self, dataset: DMLDataset, indices: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        raw = dataset.labels[self.indices]
        self.classes, self.labels = np.unique(raw, return_inverse=True)
        self.labels = self.labels.astype(np.int64)

    @classmethod
    def of_classes(cls, dataset: DMLDataset, classes: "np.ndarray | list[int]") -> "Split":
        return cls(dataset, dataset.indices_of(classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)


class BatchPlan:
    """Yields batches (arrays of positions in the split) for one epoch of `iterations`."""

    def __init__(self, labels: np.ndarray, batch_size: int, m_per_class: int,
                 iterations: int, seed: int) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.m = m_per_class
        self.iterations = iterations
        self.rng = np.random.default_rng(seed)
        n_classes = len(np.unique(labels))
        if m_per_class > 1:  # (m_per_class divides batch_size: checked by the config)
            if m_per_class * n_classes < batch_size:
                raise UserError(
                    f"train.batch_size={batch_size} needs {batch_size // m_per_class} classes at "
                    f"m_per_class={m_per_class}, but the training split has {n_classes}; "
                    "lower the batch size or m_per_class")
            self.sampler = MPerClassSampler(labels, m_per_class, batch_size,
                                            length_before_new_iter=iterations * batch_size)
        elif len(labels) < batch_size:
            raise UserError(f"train.batch_size={batch_size} exceeds the {len(labels)} training "
                            "images; lower it")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.m > 1:
            # PML's sampler draws from the global numpy RNG: drive it from our own seed stream
            # so that epochs are reproducible and resumable.
            state = np.random.get_state()
            np.random.seed(int(self.rng.integers(2 ** 31)))
            self.sampler.labels.sort()  # the sampler shuffles this list in place
            try:
                order = np.fromiter(iter(self.sampler), dtype=np.int64)
            finally:
                np.random.set_state(state)
        else:
            need = self.iterations * self.batch_size
            reps = -(-need // len(self.labels))
            order = np.concatenate([self.rng.permutation(len(self.labels)) for _ in range(reps)])
        for i in range(self.iterations):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class TensorImages:
    """In-memory uint8 images as one (N, C, H, W) tensor; batches as normalised float tensors."""

    def __init__(self, split: Split, device: torch.device, image_size: int | None = None) -> None:
        images = split.dataset.images[split.indices]
        t = torch.from_numpy(np.ascontiguousarray(images))
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        if image_size is not None and t.shape[-1] != image_size:
            t = F.interpolate(t.float(), size=(image_size, image_size), mode="bilinear",
                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
        self.images = t.contiguous().to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.device = device
        self.channels = self.images.shape[1]

    def batch(self, positions: np.ndarray, *, augment: bool,
              generator: torch.Generator | None = None,
              part: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of `positions[start:stop]` (`part`; default all) and labels of all positions.
        Augmentation parameters are drawn for the whole batch, so a data-parallel rank's rows
        equal the same rows of a one-process batch."""
        idx = torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(self.device)
        a, b = part or (0, len(idx))
        x = self.images.index_select(0, idx[a:b]).float().div_(127.5).sub_(1.0)
        if augment:
            params = torch.rand(len(idx), 4, generator=generator, device="cpu")
            x = random_affine(x, params=params[a:b])
        return x, self.labels.index_select(0, idx)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self.labels), batch_size):
            pos = np.arange(s, min(s + batch_size, len(self.labels)))
            yield self.batch(pos, augment=False)


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None, *,
                  params: torch.Tensor | None = None, max_shift: float = 0.08,
                  scale: tuple[float, float] = (0.9, 1.1), max_rotate: float = 0.1
                  ) -> torch.Tensor:
    """Per-image random translation, scale and rotation (radians) in one grid_sample;
    `params` (B, 4) uniform [0, 1) draws, else drawn from `generator`."""
    if params is None:
        params = torch.rand(x.shape[0], 4, generator=generator, device="cpu")
    r = params.to(x.device)
    s = scale[0] + (scale[1] - scale[0]) * r[:, 0]
    a = (2 * r[:, 1] - 1) * max_rotate
    tx, ty = (2 * r[:, 2] - 1) * 2 * max_shift, (2 * r[:, 3] - 1) * 2 * max_shift
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FileImages(torch.utils.data.Dataset):
    """On-disk images decoded with PIL, transformed by a torchvision transform."""

    def __init__(self, split: Split, transform) -> None:
        self.paths = [split.dataset.paths[i] for i in split.indices]
        self.labels = split.labels
        self.transform = transform
        from dmlbench.bench.data.download import CHECKABLE

        ds = split.dataset
        root = ds.meta.get("check_root") or ds.meta.get("root")
        self.check_hint = (f"find every missing or unreadable file with `dmlbench datasets check "
                           f"{ds.name} --root {root}`" if root and ds.name in CHECKABLE
                           else "check the dataset root")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image file {path} is missing; {self.check_hint}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                            "replace or remove the file") from None
        return self.transform(img), int(self.labels[i])


def default_file_transforms(image_size: int, train: bool):
    """Generic RGB transforms for on-disk datasets (paper-exact ones live with the backbones)."""
    from torchvision import transforms as T

    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                          T.ToTensor(), norm])
    return T.Compose([T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size),
                      T.ToTensor(), norm])


class ImageSource:
    """Uniform access to a split's images for the training loop, in memory or on disk.

    `cache` ("none", "host", "device"; `dataset.cache`) serves on-disk images from the
    decoded-image cache (bench.data.cache) instead of PIL: crops and normalisation on the
    device. In-memory datasets are on the device already and ignore it."""

    def __init__(self, split: Split, device: torch.device, *, image_size: int,
                 num_workers: int = 0, transforms=None, cache: str = "none") -> None:
        self.split = split
        self.device = device
        self.num_workers = num_workers
        self.cached = None
        if split.dataset.images is not None:
            self.memory: TensorImages | None = TensorImages(split, device, image_size)
            self.channels = self.memory.channels
        elif cache != "none":
            from dmlbench.bench.data.cache import CachedImages, CropSpec

            self.memory = None
            self.cached = CachedImages(split, device, CropSpec.of(transforms, image_size), cache,
                                       num_workers=num_workers)
            self.channels = 3
        else:
            self.memory = None
            tr = transforms or default_file_transforms
            self.train_files = FileImages(split, tr(image_size, True))
            self.eval_files = FileImages(split, tr(image_size, False))
            self.channels = 3

    def train_batches(self, plan: BatchPlan, *, augment: bool, generator: torch.Generator,
                      part: tuple[int, int] | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) per batch of the plan; with `part` = (start, stop), the images of
        those rows of each batch only (a data-parallel rank's share) and the labels of all."""
        if self.memory is not None:
            for pos in plan:
                yield self.memory.batch(pos, augment=augment, generator=generator, part=part)
            return
        if self.cached is not None:  # random crops always, as the PIL path's train transform
            for pos in plan:
                yield self.cached.train_batch(pos, generator=generator, part=part)
            return
        batches = list(plan)
        a, b = part or (0, len(batches[0]) if batches else 0)
        loader = torch.utils.data.DataLoader(
            self.train_files, batch_sampler=[p[a:b].tolist() for p in batches],
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        for pos, (x, _) in zip(batches, loader):
            y = torch.from_numpy(self.split.labels[pos])
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.memory is not None:
            yield from self.memory.batches(batch_size)
            return
        if self.cached is not None:
            yield from self.cached.eval_batches(batch_size)
            return
        loader = torch.utils.data.DataLoader(self.eval_files, batch_size=batch_size,
                                             shuffle=False, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
