"""Image-space filtering: amplify or attenuate frequency bands, one gain vector per image."""

import kornia
import torch
from torch import Tensor

from augment.axis import DENSE_MAX_SIZE, reflect_filter_matrices


def band_filter(images: Tensor, gains: Tensor, bank: Tensor, dense: bool | None = None) -> Tensor:
    """Filters images [N, C, H, W] separably with the per-image filter gains [N, B] @ bank [B, T].

    The image is extended by reflection at its borders. `dense` forces per-axis matrices (True) or
    kornia's separable convolution (False, needs sides longer than T // 2); None picks by size.
    """
    n, c, height, width = images.shape
    bank = bank.to(device=images.device, dtype=images.dtype)
    gains = gains.to(device=images.device, dtype=images.dtype)
    if dense is None:
        dense = max(height, width) <= DENSE_MAX_SIZE
    if not dense:
        taps = gains @ bank
        return kornia.filters.filter2d_separable(images, taps, taps, border_type="reflect")
    # A sum of band filters is the same sum of their matrices.
    my = torch.einsum("nb,bij->nij", gains, reflect_filter_matrices(bank, height))
    mx = torch.einsum("nb,bij->nij", gains, reflect_filter_matrices(bank, width))
    return my[:, None] @ images @ mx[:, None].transpose(-1, -2)
