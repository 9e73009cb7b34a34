"""DiffAugment: a fixed policy of differentiable augmentations, applied to every image D sees.

Zhao, Liu, Lin, Zhu and Han, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020. Unlike ADA there is no probability: every image, real or generated, gets every
transform of the policy, each image with its own random parameters. The laws, from the paper
(translation within [-1/8, 1/8] of the image size padded with zeros, cutout of a random square of
half the image size, brightness in [-0.5, 0.5], contrast in [0.5, 1.5], saturation in [0, 2]) and
its reference implementation (`DiffAugment_pytorch.py` in mit-han-lab/data-efficient-gans, for the
details), in the order they run within a policy:

    color        brightness  x + b                   b ~ U[-0.5, 0.5)
                 saturation  m_px + s (x - m_px)     s ~ U[0, 2)      m_px: each pixel's mean over channels
                 contrast    m_img + c (x - m_img)   c ~ U[0.5, 1.5)  m_img: the image's mean (all channels)
    translation  the image moves by a whole number of pixels, uniform in [-t, t] along each axis
                 independently, t = round(size / 8); the pixels moved in are 0
    cutout       a square of side round(size / 2) is set to 0; its centre is uniform over the image
                 (the size + 1 pixel corners for an even side, the size pixel centres for an odd one)
                 and the square is clipped at the border

(round() rounds halves up, as the reference's int(size * ratio + 0.5) does: t = 2 and a side of 8
at 16 px.) The reference applies these constants to images in [-1, 1] (its StyleGAN2 trainer
scales pixels by / 127.5 - 1, its BigGAN one normalises with mean and std 0.5), the range of ours,
so they apply unchanged here: a brightness offset moves an image by up to a quarter of its range,
and the 0 that translation and cutout fill in is mid-grey. On one-channel images saturation is the
identity (each pixel is its own channel mean), as in the reference.

Usable on its own (it imports nothing from `ada`):

    from augment.diffaug import DiffAugment
    pipe = DiffAugment("color,translation,cutout")
    augmented = pipe(images)          # images: float [N, C, H, W]

Every operation is a differentiable function of the images (gradients reach G through it).
Composing with ADA's pipe is `torch.nn.Sequential(DiffAugment(policy), AugmentPipe(...))`, the
order the DiffAugment authors use when they combine the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType

import torch
from torch import Tensor

# The paper's constants.
BRIGHTNESS_RANGE = (-0.5, 0.5)
SATURATION_RANGE = (0.0, 2.0)
CONTRAST_RANGE = (0.5, 1.5)
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5

DEFAULT_POLICY = "color,translation,cutout"


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def translation_range(size: int) -> int:
    """The largest shift in pixels along an axis of `size` pixels: round(size / 8)."""
    return _round_half_up(size * TRANSLATION_RATIO)


def cutout_side(size: int) -> int:
    """The side of the cut square in pixels: round(size / 2)."""
    return _round_half_up(size * CUTOUT_RATIO)


# ----- the transforms, deterministic given their parameters (one value or pair per image) -----


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    return values.to(images.dtype).reshape(-1, 1, 1, 1)


def brightness(images: Tensor, offset: Tensor) -> Tensor:
    """x + b, one offset b per image ([N])."""
    return images + _per_image(offset, images)


def saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Each pixel's deviation from its own mean over channels, scaled by one factor per image ([N])."""
    mean = images.mean(dim=1, keepdim=True)
    return mean + (images - mean) * _per_image(factor, images)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Each image's deviation from its mean over all pixels and channels, scaled by its factor ([N])."""
    mean = images.mean(dim=[1, 2, 3], keepdim=True)
    return mean + (images - mean) * _per_image(factor, images)


def translate(images: Tensor, shift: Tensor) -> Tensor:
    """Move each image by whole pixels, `shift` [N, 2] as (down, right): out[y, x] = in[y - dy, x - dx],
    0 where that lies outside the image."""
    n, c, h, w = images.shape
    rows = torch.arange(h, device=images.device) - shift[:, :1]  # [N, H]: the source row of each output row
    cols = torch.arange(w, device=images.device) - shift[:, 1:]  # [N, W]
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    # Gather rows, then columns, from clamped positions; the mask zeroes what came from outside.
    out = images.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    return out * inside.to(images.dtype)


def cut_out(images: Tensor, corner: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero a rectangle of `size` (height, width) per image whose top-left pixel is `corner` [N, 2]
    (row, column); it may reach past the border (corner < 0 or beyond), where it is simply clipped."""
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device) - corner[:, :1]  # [N, H]: position within the rectangle
    cols = torch.arange(w, device=images.device) - corner[:, 1:]
    cut = ((rows >= 0) & (rows < size[0]))[:, None, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, None, :]
    return images * (~cut).to(images.dtype)


# ----- the paper's laws -----


def _uniform(n: int, bounds: tuple[float, float], images: Tensor) -> Tensor:
    lo, hi = bounds
    return torch.rand(n, device=images.device, dtype=images.dtype) * (hi - lo) + lo


def random_brightness(images: Tensor) -> Tensor:
    return brightness(images, _uniform(images.shape[0], BRIGHTNESS_RANGE, images))


def random_saturation(images: Tensor) -> Tensor:
    return saturation(images, _uniform(images.shape[0], SATURATION_RANGE, images))


def random_contrast(images: Tensor) -> Tensor:
    return contrast(images, _uniform(images.shape[0], CONTRAST_RANGE, images))


def draw_shifts(n: int, h: int, w: int, device: torch.device) -> Tensor:
    """[N, 2] whole-pixel shifts, uniform in [-round(h/8), round(h/8)] x [-round(w/8), round(w/8)]."""
    th, tw = translation_range(h), translation_range(w)
    dy = torch.randint(-th, th + 1, [n, 1], device=device)
    dx = torch.randint(-tw, tw + 1, [n, 1], device=device)
    return torch.cat([dy, dx], dim=1)


def draw_cutout_corners(n: int, h: int, w: int, device: torch.device) -> tuple[Tensor, tuple[int, int]]:
    """Top-left corners [N, 2] of cut squares with centres uniform over the image, and their size.

    Along each axis the centre ranges over 0..size in corner coordinates for an even side and over
    the pixels 0..size-1 for an odd one; the square covers [centre - side // 2, centre - side // 2 + side).
    (A non-square image gets a rectangle of half its height and half its width, as in the reference.)
    """
    sh, sw = cutout_side(h), cutout_side(w)
    cy = torch.randint(0, h + 1 - sh % 2, [n, 1], device=device)
    cx = torch.randint(0, w + 1 - sw % 2, [n, 1], device=device)
    return torch.cat([cy - sh // 2, cx - sw // 2], dim=1), (sh, sw)


def random_translation(images: Tensor) -> Tensor:
    n, _, h, w = images.shape
    return translate(images, draw_shifts(n, h, w, images.device))


def random_cutout(images: Tensor) -> Tensor:
    n, _, h, w = images.shape
    corners, size = draw_cutout_corners(n, h, w, images.device)
    return cut_out(images, corners, size)


# Policy name -> its transforms, in the order they run.
POLICIES: MappingProxyType[str, tuple[Callable[[Tensor], Tensor], ...]] = MappingProxyType({
    "color": (random_brightness, random_saturation, random_contrast),
    "translation": (random_translation,),
    "cutout": (random_cutout,),
})


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """'color,translation,cutout' (or a sequence of names) -> the names in order; ValueError if empty,
    unknown or repeated."""
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    names = [name.strip() for name in names]
    if not any(names):
        raise ValueError(f"the policy is empty; give some of {', '.join(POLICIES)}")
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown[0]!r}: choose from {', '.join(POLICIES)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"DiffAugment policy {repeated[0]!r} is given twice")
    return tuple(names)


class DiffAugment(torch.nn.Module):
    """DiffAugment's policies as a module: images [N, C, H, W] -> augmented images, every image,
    every call, with fresh parameters drawn from torch's global generator (so torch.manual_seed
    makes a run reproducible). Policies run in the order given, as in the reference code."""

    def __init__(self, policy: str | Sequence[str] = DEFAULT_POLICY) -> None:
        super().__init__()
        self.policy = parse_policy(policy)

    def extra_repr(self) -> str:
        return f"policy={','.join(self.policy)}"

    def forward(self, images: Tensor) -> Tensor:
        for name in self.policy:
            for transform in POLICIES[name]:
                images = transform(images)
        return images
