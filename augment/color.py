"""Applying a per-image 4x4 homogeneous colour matrix."""

import torch
from torch import Tensor


def apply_color(images: Tensor, color: Tensor) -> Tensor:
    """Maps each pixel's colour through color [N, 4, 4] (acting on (r, g, b, 1)).

    RGB images use the matrix as it is. A one-channel image is read as grey, (g, g, g), and the
    mean of the three output channels is kept; rotations and scalings about the luma axis (hue,
    saturation) leave grey unchanged, so only brightness, contrast and luma flip act on it.
    """
    n, c, height, width = images.shape
    color = color.to(images.dtype)
    if c == 3:
        flat = images.reshape(n, 3, height * width)
        return torch.baddbmm(color[:, :3, 3:], color[:, :3, :3], flat).reshape(n, 3, height, width)
    if c == 1:
        grey = color[:, :3, :].mean(dim=1)
        scale = grey[:, :3].sum(dim=1).view(n, 1, 1, 1)
        return images * scale + grey[:, 3].view(n, 1, 1, 1)
    raise ValueError(f"colour transforms need 1 or 3 channels, got {c}: use a preset without 'c'")
