"""Label-free and label-based views of what a generator covers: pairwise diversity (mode collapse),
nearest-neighbour distances to the training set (memorisation) and class coverage.

Pure functions of image or feature batches; no networks, no I/O. The trainer uses
`diversity_ratio` as its collapse signal; the quality benchmark uses all of them.
"""

from __future__ import annotations

import math

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs of distinct rows of x [N, ...] (N >= 2)."""
    rows = _flat(x)
    n = rows.shape[0]
    if n < 2:
        raise ValueError("mean_pairwise_distance needs at least two samples")
    return float(torch.cdist(rows, rows).sum() / (n * (n - 1)))


def diversity_ratio(fakes: torch.Tensor, reals: torch.Tensor) -> float:
    """How spread out generated samples are compared with real ones: 1 is as diverse as the data,
    0 is every sample the same image. A collapsing GAN drives it towards 0 long before its loss
    shows anything; an unusually high value means noise rather than images."""
    spread = mean_pairwise_distance(reals)
    return mean_pairwise_distance(fakes) / spread if spread > 0 else math.nan


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """For each query row, the L2 distance to its nearest row of `reference`. [Q] float64."""
    ref = _flat(reference)
    return torch.cat([torch.cdist(_flat(q), ref).min(dim=1).values for q in queries.split(batch)])


def memorisation_ratio(samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor) -> float:
    """Mean distance of generated samples to their nearest training image, divided by the same for
    real images that were not trained on. Near 1: samples are as novel as fresh real data; well
    below 1: the generator reproduces training images."""
    return float(nearest_distances(samples, train).mean() / nearest_distances(heldout, train).mean())


def class_histogram(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Share of samples per predicted class, [num_classes] summing to 1."""
    counts = torch.bincount(predicted.flatten().long(), minlength=num_classes)[:num_classes].to(torch.float64)
    return counts / counts.sum().clamp(min=1)


def class_entropy(predicted: torch.Tensor, num_classes: int) -> float:
    """Entropy of the predicted-class distribution in bits: log2(num_classes) for even coverage, 0 for one class."""
    share = class_histogram(predicted, num_classes)
    share = share[share > 0]
    return float(-(share * share.log2()).sum())


def classes_reached(
    predicted: torch.Tensor, num_classes: int, readable: torch.Tensor | None = None, min_share: float | None = None
) -> int:
    """Classes that hold at least `min_share` of all samples (default: a fifth of an even share, so a
    class the generator produces only by accident is not counted). With a `readable` mask only
    those samples count towards their class: a classifier puts every blob into some class, so
    counting only the samples it is sure of keeps noise from covering classes."""
    threshold = 0.2 / num_classes if min_share is None else min_share
    counts = torch.bincount(predicted[readable] if readable is not None else predicted.flatten(), minlength=num_classes)
    return int((counts[:num_classes] >= threshold * predicted.numel()).sum())
