"""Linear maps along one image axis, shared by the geometric and image-space filters.

Small images are filtered with dense per-axis matrices, which on a CPU run many times faster than
the equivalent one-channel convolutions; large images, where a dense matrix costs O(size) per
pixel, use convolutions. Both paths compute the same map.
"""

import torch
from torch import Tensor

# Largest image side filtered with dense per-axis matrices (about where the two paths cost the
# same on a CPU, measured for the geometric resampling).
DENSE_MAX_SIZE = 256


def reflect_index(j: Tensor, length: int) -> Tensor:
    """Maps positions of a reflect-extended signal (edge sample not repeated) into [0, length)."""
    if length == 1:
        return torch.zeros_like(j)
    period = 2 * (length - 1)
    j = j.remainder(period)
    return torch.where(j < length, j, period - j)


def reflect_filter_matrices(taps: Tensor, length: int) -> Tensor:
    """Centred correlation with each row of taps [B, T] (T odd) over a reflect-extended signal.

    Returns [B, length, length]: row i of matrix b holds the weights of output sample i.
    """
    num_filters, num_taps = taps.shape
    i = torch.arange(length, device=taps.device)[:, None]
    k = torch.arange(num_taps, device=taps.device)[None, :]
    cols = reflect_index(i + k - num_taps // 2, length).expand(num_filters, -1, -1)
    weights = taps[:, None, :].expand(-1, length, -1)
    m = torch.zeros(num_filters, length, length, dtype=taps.dtype, device=taps.device)
    return m.scatter_add_(2, cols, weights)
