"""Geometric resampling: warp each image once by its own affine map, with anti-aliasing.

Following ADA, an image is reflect-padded, upsampled 2x with the sym6 wavelet low-pass, sampled
bilinearly at the warped positions of a 2x output grid, and low-passed and decimated back to its
size. The wavelet is orthonormal, so upsampling followed by downsampling is exactly the identity:
warping by the identity map returns the input up to rounding.

Maps that only move whole pixels (flips, quarter turns, integer shifts) are applied exactly by
`blit` instead: sym6 is not symmetric, so resampling a mirrored image shifts it by a fraction of a
pixel, which a pixel copy avoids.

The separable filtering steps are linear maps along one image axis (see augment.axis): dense
matrices with reflection, upsampling and cropping folded in for small images, strided (transposed)
convolutions for large ones.
"""

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from augment.axis import DENSE_MAX_SIZE, reflect_index
from augment.matrices import affine_inverse, compose
from augment.wavelets import SYM6


def lowpass(taps: tuple[float, ...] = SYM6, dtype: torch.dtype = torch.float32,
            device: torch.device | None = None) -> Tensor:
    """The wavelet low-pass normalised to unit DC gain."""
    h = torch.tensor(taps, dtype=torch.float64)
    return (h / h.sum()).to(dtype=dtype, device=device)


def _upsample_offset(num_taps: int) -> int:
    # Delay that puts the upsampled signal where ADA's coordinate conventions expect it.
    return num_taps - 1 - (num_taps + 1) // 2


def _downsample_offset(num_taps: int) -> int:
    return 2 * (num_taps // 4) - (num_taps - 1) // 2


def pad_upsample_matrix(length: int, pad0: int, pad1: int, h: Tensor) -> Tensor:
    """[2 * (length + pad0 + pad1), length]: reflect-pad by (pad0, pad1), then upsample 2x with h."""
    padded = length + pad0 + pad1
    m = torch.arange(2 * padded, device=h.device)[:, None]
    i = torch.arange(padded, device=h.device)[None, :]
    k = _upsample_offset(h.numel()) + m - 2 * i
    valid = (k >= 0) & (k < h.numel())
    up = torch.where(valid, 2 * h[k.clamp(0, h.numel() - 1)], torch.zeros((), dtype=h.dtype, device=h.device))
    source = reflect_index(torch.arange(padded, device=h.device) - pad0, length)
    return torch.zeros(2 * padded, length, dtype=h.dtype, device=h.device).index_add_(1, source, up)


def downsample_matrix(length: int, h: Tensor) -> Tensor:
    """[length, 2 * (length + 2q)] with q = taps // 4: low-pass with h, decimate 2x, crop the margin."""
    size = 2 * (length + 2 * (h.numel() // 4))
    i = torch.arange(length, device=h.device)[:, None]
    k = torch.arange(h.numel(), device=h.device)[None, :]
    cols = _downsample_offset(h.numel()) + 2 * i + k
    m = torch.zeros(length, size, dtype=h.dtype, device=h.device)
    return m.scatter_(1, cols, h.expand(length, -1).contiguous())


def _pad_upsample_conv(x: Tensor, pads: tuple[int, int, int, int], h: Tensor) -> Tensor:
    n, c, height, width = x.shape
    x = F.pad(x, pads, mode="reflect")
    x = x.reshape(n * c, 1, x.shape[2], x.shape[3])
    offset = _upsample_offset(h.numel())
    hu, wu = 2 * x.shape[2], 2 * x.shape[3]
    x = F.conv_transpose2d(x, 2 * h.view(1, 1, 1, -1), stride=(1, 2))[..., offset:offset + wu]
    x = F.conv_transpose2d(x, 2 * h.view(1, 1, -1, 1), stride=(2, 1))[..., offset:offset + hu, :]
    return x.reshape(n, c, hu, wu)


def _downsample_conv(x: Tensor, h: Tensor) -> Tensor:
    n, c, height, width = x.shape
    offset = _downsample_offset(h.numel())
    x = x.reshape(n * c, 1, height, width)[..., offset:, offset:]
    x = F.conv2d(x, h.view(1, 1, 1, -1), stride=(1, 2))
    x = F.conv2d(x, h.view(1, 1, -1, 1), stride=(2, 1))
    return x.reshape(n, c, x.shape[2], x.shape[3])


def _const(rows: list[list[float]], like: Tensor) -> Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _margins(g_inv: Tensor, height: int, width: int, q: int) -> tuple[int, int, int, int]:
    """Reflection padding (left, right, top, bottom) that covers every sample position plus the filter."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = _const([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], g_inv)
    xy = compose(g_inv, corners)[:, :2, :]
    low = (-xy).amax(dim=(0, 2)) + _const([2 * q - cx, 2 * q - cy], g_inv)
    high = xy.amax(dim=(0, 2)) + _const([2 * q - cx, 2 * q - cy], g_inv)
    limit = _const([width - 1, height - 1], g_inv)
    low = torch.minimum(low.clamp(min=0), limit).ceil()
    high = torch.minimum(high.clamp(min=0), limit).ceil()
    x0, y0 = (int(v) for v in low.tolist())
    x1, y1 = (int(v) for v in high.tolist())
    return x0, x1, y0, y1


def _source_positions(g_inv: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Input (x, y) pixel positions, from the top-left pixel, that each output pixel reads: [N, H, W] each."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    x = torch.arange(width, dtype=g_inv.dtype, device=g_inv.device) - cx
    y = torch.arange(height, dtype=g_inv.dtype, device=g_inv.device) - cy
    a = g_inv[:, :2, :, None, None]
    sx = a[:, 0, 0] * x + a[:, 0, 1] * y[:, None] + a[:, 0, 2] + cx
    sy = a[:, 1, 0] * x + a[:, 1, 1] * y[:, None] + a[:, 1, 2] + cy
    return sx, sy


def warp_bilinear(images: Tensor, source_from_output: Tensor, size: tuple[int, int]) -> Tensor:
    """Output [N, C, *size]: each output pixel (x, y) reads `images` bilinearly at source_from_output @ (x, y, 1),
    0 outside. Positions are pixel indices, origin at the top-left pixel centre; source_from_output is [N, 3, 3].

    kornia's warp_affine, which takes the map the other way round. It gives torch's affine_grid and
    grid_sample to float32 rounding at the same speed (benchmarks/augment_speed.py --compare-warp);
    kornia before 0.9 placed the samples differently with align_corners=False, hence kornia>=0.9.
    """
    output_from_source = affine_inverse(source_from_output)[:, :2, :]
    return kornia.geometry.transform.warp_affine(images, output_from_source, size, mode="bilinear",
                                                 padding_mode="zeros", align_corners=False)


def is_blit(g_inv: Tensor, height: int, width: int) -> Tensor:
    """Which maps move whole pixels (flips, quarter turns, integer shifts), bool [N].

    That is: the linear part is a signed permutation and the top-left output pixel reads an
    input pixel centre (then every output pixel does).
    """
    linear = g_inv[:, :2, :2]
    permutation = ((linear == linear.round()).flatten(1).all(dim=1)
                   & (linear.abs().sum(dim=1) == 1).all(dim=1) & (linear.abs().sum(dim=2) == 1).all(dim=1))
    centre = g_inv.new_tensor([(width - 1) / 2, (height - 1) / 2])
    corner = (linear * -centre).sum(dim=2) + g_inv[:, :2, 2] + centre
    return permutation & (corner == corner.round()).all(dim=1)


def blit(images: Tensor, g_inv: Tensor) -> Tensor:
    """Exact warp for maps that move whole pixels (see is_blit): each output pixel copies one input pixel.

    Positions outside the image read its reflection, as the resampling path does.
    """
    n, c, height, width = images.shape
    sx, sy = _source_positions(g_inv.to(torch.float64), height, width)
    ix = reflect_index(sx.round().long(), width)
    iy = reflect_index(sy.round().long(), height)
    index = (iy * width + ix).view(n, 1, height * width).expand(-1, c, -1)
    return images.flatten(2).gather(2, index).view(n, c, height, width)


def resample(images: Tensor, g_inv: Tensor, dense: bool | None = None) -> Tensor:
    """Warps images [N, C, H, W] by per-image maps g_inv [N, 3, 3].

    g_inv takes an output pixel to the input position it is read from, both in pixels from the
    image centre. Outside the reflect-padded area (at most one image size on each side) the input
    reads as 0. `dense` forces the matrix (True) or convolution (False) path; None picks by size.
    """
    n, c, height, width = images.shape
    h = lowpass(SYM6, images.dtype, images.device)
    q = h.numel() // 4
    g_inv = g_inv.to(images.dtype)
    x0, x1, y0, y1 = _margins(g_inv, height, width, q)
    if dense is None:
        dense = max(height, width) <= DENSE_MAX_SIZE

    if dense:
        ux = pad_upsample_matrix(width, x0, x1, h)
        uy = pad_upsample_matrix(height, y0, y1, h)
        up = uy @ (images @ ux.T)
    else:
        up = _pad_upsample_conv(images, (x0, x1, y0, y1), h)

    # Output-to-input map in centred coordinates of the upsampled images: shift the centre by the
    # uneven padding, then conjugate with the 2x scaling and the half-sample delay of the filters.
    shift = _const([[1, 0, (x0 - x1) / 2], [0, 1, (y0 - y1) / 2], [0, 0, 1]], images)
    to_fine = _const([[2, 0, -0.5], [0, 2, -0.5], [0, 0, 1]], images)
    from_fine = _const([[0.5, 0, 0.25], [0, 0.5, 0.25], [0, 0, 1]], images)
    g_fine = compose(compose(compose(to_fine, shift), g_inv), from_fine)

    grid_h, grid_w = 2 * (height + 2 * q), 2 * (width + 2 * q)
    # The same map between pixel indices (origin at the top-left pixel centre).
    up_from_centred = _const([[1, 0, (up.shape[3] - 1) / 2], [0, 1, (up.shape[2] - 1) / 2], [0, 0, 1]], images)
    centred_from_grid = _const([[1, 0, -(grid_w - 1) / 2], [0, 1, -(grid_h - 1) / 2], [0, 0, 1]], images)
    warped = warp_bilinear(up, compose(compose(up_from_centred, g_fine), centred_from_grid), (grid_h, grid_w))

    if dense:
        return downsample_matrix(height, h) @ warped @ downsample_matrix(width, h).T
    return _downsample_conv(warped, h)
