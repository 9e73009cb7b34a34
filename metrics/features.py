"""Feature extraction passes over the real data and over generated images, batched, sharded, cached.

Sharding follows the official scheme: with world_size W, rank r takes items r, r + W, r + 2W, ...
(wrapping around so every rank runs the same number of batches), and the features of all ranks are
all-gathered and interleaved back into dataset order. At world_size 1 nothing is communicated.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import Generator, LabelSampler, RealImages, image_of
from .feature_nets import FeatureNet


class FeatureStats:
    """Features of up to ``max_items`` images: float64 running sums for mean/cov, and all rows on request."""

    def __init__(self, max_items: int, capture_all: bool):
        self.max_items = max_items
        self.capture_all = capture_all
        self.num_items = 0
        self.sum: torch.Tensor | None = None
        self.sum_outer: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []

    @property
    def is_full(self) -> bool:
        return self.num_items >= self.max_items

    def append(self, x: torch.Tensor) -> None:
        x = x[: self.max_items - self.num_items].detach()
        if x.shape[0] == 0:
            return
        x64 = x.to(torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.sum_outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        self.sum += x64.sum(dim=0)
        self.sum_outer += x64.T @ x64
        if self.capture_all:
            self.rows.append(x.to(torch.float32).cpu())
        self.num_items += x.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance (divided by n, as the official FID does) in float64."""
        mu = (self.sum / self.num_items).cpu().numpy()
        return mu, (self.sum_outer / self.num_items).cpu().numpy() - np.outer(mu, mu)

    def all(self) -> np.ndarray:
        if not self.capture_all:
            raise RuntimeError("these statistics were gathered without keeping every feature row")
        return torch.cat(self.rows).numpy()

    def save(self, path: Path) -> None:
        """Atomic write as .npz (plain arrays, loaded without pickle)."""
        arrays = dict(num_items=np.int64(self.num_items), max_items=np.int64(self.max_items),
                      sum=self.sum.cpu().numpy(), sum_outer=self.sum_outer.cpu().numpy())
        if self.capture_all:
            arrays["rows"] = self.all()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path, allow_pickle=False) as z:
            stats = cls(int(z["max_items"]), capture_all="rows" in z)
            stats.num_items = int(z["num_items"])
            stats.sum = torch.from_numpy(z["sum"])
            stats.sum_outer = torch.from_numpy(z["sum_outer"])
            if stats.capture_all:
                stats.rows = [torch.from_numpy(z["rows"])]
        return stats


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Items rank ``rank`` processes: rank, rank + W, ..., wrapped so all ranks have ceil(n / W) items."""
    return [(i * world_size + rank) % n for i in range(math.ceil(n / world_size))]


def gather_rows(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' rows, interleaved so that rank r's i-th row lands at position i * W + r."""
    if world_size == 1:
        return x
    if not torch.distributed.is_initialized():
        raise ValueError(f"world_size={world_size} needs torch.distributed to be initialised")
    parts = [torch.empty_like(x) for _ in range(world_size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Feature networks take 3 channels: grayscale is repeated, as the official metrics do."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def quantize(images: torch.Tensor) -> torch.Tensor:
    """G's float output in [-1, 1] -> uint8, exactly as the official metrics: floor(x * 127.5 + 128)."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


def _cache_path(cache_dir: Path, reals: RealImages, shape: tuple[int, ...], net: FeatureNet,
                num_items: int, capture_all: bool) -> Path:
    key = f"{reals.name}-{shape[-1]}x{shape[-2]}-{net.name}-{num_items}-{'all' if capture_all else 'meancov'}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:120]
    return cache_dir / "metrics" / f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.npz"


def _batches(
    reals: RealImages, indices: list[int], batch_size: int, num_workers: int
) -> Iterator[torch.Tensor]:
    subset = torch.utils.data.Subset(reals, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=lambda items: torch.stack([image_of(i) for i in items]))
    yield from loader


@torch.no_grad()
def real_features(
    reals: RealImages,
    net: FeatureNet,
    *,
    max_items: int | None,
    capture_all: bool,
    device: torch.device,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> FeatureStats:
    """Features of the first ``max_items`` real images (all when None), cached on disk by
    dataset name, resolution, feature network, count and kind."""
    n = len(reals) if max_items is None else min(len(reals), max_items)
    cache_file = None
    if cache_dir is not None:
        cache_file = _cache_path(Path(cache_dir), reals, tuple(image_of(reals[0]).shape), net, n, capture_all)
        if cache_file.is_file():
            return FeatureStats.load(cache_file)
    stats = FeatureStats(n, capture_all)
    with progress_bar(n, "real features", progress and rank == 0) as bar:
        for images in _batches(reals, shard_indices(n, rank, world_size), batch_size, num_workers):
            features = net(to_rgb(images.to(device)))
            stats.append(gather_rows(features, world_size))
            bar.update(min(features.shape[0] * world_size, n - bar.n))
    if cache_file is not None and rank == 0:
        stats.save(cache_file)
    return stats


@contextlib.contextmanager
def seeded_global_rng(rng: torch.Generator, device: torch.device) -> Iterator[None]:
    """G draws its per-layer noise from torch's global RNG. Run it inside a forked global RNG seeded
    from ``rng``: the same seed gives the same number twice, and the caller's RNG stream is untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        yield


def eval_copy(generator: Generator, device: torch.device) -> Generator:
    """A frozen copy of G in eval mode: metrics must not update w_avg or touch the caller's G."""
    return copy.deepcopy(generator).eval().requires_grad_(False).to(device)


@torch.no_grad()
def generated_features(
    generator: Generator,
    net: FeatureNet,
    *,
    num_items: int,
    labels: LabelSampler,
    rng: torch.Generator,
    device: torch.device,
    batch_size: int = 64,
    noise_mode: str = "random",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> FeatureStats:
    """Features of ``num_items`` images from G, every row kept.

    z and labels are drawn on the CPU from ``rng``, so a seed gives the same images on any device;
    with several ranks, seed each rank's ``rng`` differently.
    """
    stats = FeatureStats(num_items, capture_all=True)
    per_rank = math.ceil(num_items / world_size)
    with progress_bar(num_items, "generator features", progress and rank == 0) as bar, \
            seeded_global_rng(rng, device):
        for start in range(0, per_rank, batch_size):
            b = min(batch_size, per_rank - start)
            z = torch.randn([b, generator.z_dim], generator=rng)
            c = labels(b)
            # Metrics are defined on the untruncated distribution.
            images = quantize(generator(z.to(device), c.to(device), truncation_psi=1, noise_mode=noise_mode))
            features = net(to_rgb(images))
            stats.append(gather_rows(features, world_size))
            bar.update(min(b * world_size, num_items - bar.n))
    return stats
