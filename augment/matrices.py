"""Batched homogeneous matrices: 3x3 for pixel coordinates, 4x4 for RGB colours.

Every builder takes per-image parameters of shape [N] (or [N, 2]) and returns [N, 3, 3] or
[N, 4, 4] in the parameters' dtype and device. Pixel coordinates are measured in pixels from the
image centre, x to the right and y down.
"""

import math

import torch
from torch import Tensor


def compose(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product a @ b of (batches of) tiny matrices.

    Written as a broadcast multiply and sum: for 3x3 and 4x4 matrices a BLAS call costs far more
    than its arithmetic, and its worker threads stall when other processes share the cores.
    """
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)


def affine_inverse(m: Tensor) -> Tensor:
    """Inverse of affine maps [N, 3, 3] (last row 0, 0, 1), in closed form: no solver, no device sync."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - b * c
    inv = torch.zeros_like(m)
    inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1] = d / det, -b / det, -c / det, a / det
    inv[:, :2, 2] = -(inv[:, :2, :2] * m[:, None, :2, 2]).sum(dim=-1)
    inv[:, 2, 2] = 1
    return inv


def _identity(n: int, size: int, like: Tensor) -> Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device).repeat(n, 1, 1)


def translate2d(t: Tensor) -> Tensor:
    """Translation by t = [N, 2] (x, y) pixels."""
    m = _identity(t.shape[0], 3, t)
    m[:, :2, 2] = t
    return m


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    """Scaling by sx along x and sy along y."""
    m = _identity(sx.shape[0], 3, sx)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def rotate2d(cos: Tensor, sin: Tensor) -> Tensor:
    """Rotation given by its cosine and sine (so that quarter turns can be built exactly)."""
    m = _identity(cos.shape[0], 3, cos)
    m[:, 0, 0] = cos
    m[:, 0, 1] = -sin
    m[:, 1, 0] = sin
    m[:, 1, 1] = cos
    return m


def quarter_turns(k: Tensor, like: Tensor) -> Tensor:
    """Rotation by k * 90 degrees with exact integer entries; k is an integer tensor [N]."""
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=like.dtype, device=like.device)[k % 4]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=like.dtype, device=like.device)[k % 4]
    return rotate2d(cos, sin)


def luma_axis(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """The grey axis of RGB space, (1, 1, 1) / sqrt(3), as a homogeneous 4-vector."""
    return torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=dtype, device=device) / math.sqrt(3)


def _luma_projector(like: Tensor) -> Tensor:
    v = luma_axis(like.dtype, like.device)
    return torch.outer(v, v)


def brightness3d(b: Tensor) -> Tensor:
    """Adds b to every colour channel."""
    m = _identity(b.shape[0], 4, b)
    m[:, :3, 3] = b[:, None]
    return m


def contrast3d(c: Tensor) -> Tensor:
    """Multiplies every colour channel by c (contrast about 0, the middle of [-1, 1])."""
    m = _identity(c.shape[0], 4, c)
    m[:, 0, 0] = c
    m[:, 1, 1] = c
    m[:, 2, 2] = c
    return m


def lumaflip3d(flip: Tensor) -> Tensor:
    """Mirrors colours through the plane orthogonal to the luma axis where flip = 1 (Householder)."""
    eye = _identity(flip.shape[0], 4, flip)
    return eye - 2 * _luma_projector(flip) * flip[:, None, None]


def hue3d(theta: Tensor) -> Tensor:
    """Rotates colours by theta radians about the luma axis (Rodrigues' formula)."""
    v = luma_axis(theta.dtype, theta.device)[:3]
    # Cross-product matrix of v: cross @ x = v x x.
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=theta.dtype,
                         device=theta.device) / math.sqrt(3)
    outer = torch.outer(v, v)
    eye3 = torch.eye(3, dtype=theta.dtype, device=theta.device)
    c = torch.cos(theta)[:, None, None]
    s = torch.sin(theta)[:, None, None]
    m = _identity(theta.shape[0], 4, theta)
    m[:, :3, :3] = c * eye3 + s * cross + (1 - c) * outer
    return m


def saturation3d(s: Tensor) -> Tensor:
    """Scales the chroma (the component orthogonal to the luma axis) by s."""
    chroma = torch.eye(4, dtype=s.dtype, device=s.device) - _luma_projector(s)
    chroma[3, 3] = 0.0
    # Written as identity + change so that s = 1 gives the identity exactly.
    return _identity(s.shape[0], 4, s) + (s - 1)[:, None, None] * chroma
