"""From a dataset to the loop: the withheld validation images, a subset, and endless batches per rank."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import numpy as np
import torch

from ada.data import ImageDataset
from ada.errors import UserError


def no_validation_reason(num_images: int, fraction: float) -> str:
    """Why a run has no withheld images, in words that say what to change."""
    if fraction == 0:
        return "no validation split (--val=0)"
    return (
        f"no validation split: --val={fraction:g} of {num_images} images rounds to 0 images; "
        "give a larger --val to measure r_v"
    )


def split_validation(
    dataset: ImageDataset, val_fraction: float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset | None]:
    """Withhold a fixed share of the real images (the same ones for every run on this data)."""
    n = len(dataset.names)
    num_val = int(round(n * val_fraction))
    if num_val == 0:
        return dataset, None
    if num_val >= n:
        raise UserError(f"--val={val_fraction} would withhold all {n} images; use a smaller fraction")
    order = np.random.RandomState(seed).permutation(n)
    train = dataset.subset(sorted(order[num_val:].tolist()))
    val = dataset.subset(sorted(order[:num_val].tolist()), name=f"{dataset.name}-val", mirror=False)
    return train, val


def take_subset(dataset: ImageDataset, size: int | None, seed: int = 0) -> ImageDataset:
    """At most `size` images, chosen with a fixed seed."""
    if size is None or size >= len(dataset.names):
        return dataset
    order = np.random.RandomState(seed).permutation(len(dataset.names))
    return dataset.subset(sorted(order[:size].tolist()))


class InfiniteBatchSampler(torch.utils.data.Sampler):
    """Endless shuffled batches of indices for one rank.

    The global stream is a sequence of seeded permutations; global batch k holds stream items
    [k*B, (k+1)*B), and rank r takes its r-th contiguous share. Concatenating the ranks'
    batches in rank order gives exactly the single-process batch.
    """

    def __init__(self, size: int, batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, start_batch: int = 0):
        if batch % world_size != 0:
            raise ValueError(f"batch {batch} is not divisible by world size {world_size}")
        self.size = size
        self.batch = batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch // self.world_size
        pos = self.start_batch * self.batch + self.rank * per_rank
        epoch = -1
        perm: list[int] = []
        while True:
            out = []
            for i in range(pos, pos + per_rank):
                e, k = divmod(i, self.size)
                if e != epoch:
                    epoch = e
                    perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + e)).tolist()
                out.append(perm[k])
            yield out
            pos += self.batch


def ignore_interrupts(worker_id: int) -> None:
    """In loader workers: Ctrl-C reaches the whole process group, but only the trainer should act on it
    (finish the step, write a final snapshot); a worker killed by it would end the run without one.
    SIGTERM keeps its default: it is how the workers are stopped when the trainer exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def infinite_loader(
    dataset: ImageDataset, batch: int, rank: int, world_size: int, seed: int, workers: int, start_batch: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, float labels) batches for this rank, forever."""
    sampler = InfiniteBatchSampler(len(dataset), batch, rank, world_size, seed, start_batch)
    if dataset.images is not None:
        for idx in sampler:
            yield dataset.batch(idx)
    else:
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
            worker_init_fn=ignore_interrupts,
        )
        yield from loader
