"""Random draws of per-image augmentation parameters: the parameter laws of ADA, in one place.

Each draw takes the number of images n and the probability `prob` (strength * p, a tensor or a
float) that the transform is applied to each image, independently. It returns the parameter for
every image, equal to the identity value (0 shift, factor 1, no flip) where it is not applied.
Draws are float32 whatever the image dtype, so a seed gives the same augmentations in float32
and float64.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rng:
    """Where random numbers come from: `generator` (None: torch's global one) on `device`."""

    generator: torch.Generator | None = None
    device: torch.device | None = None

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


def _per_image(mask: Tensor, ndim: int) -> Tensor:
    return mask.view(-1, *([1] * (ndim - 1)))


def applied(n: int, prob: Tensor | float, rng: Rng) -> Tensor:
    """Bernoulli(prob) per image: which images get the transform. bool [n]."""
    return rng.rand(n) < prob


def coin(n: int, prob: Tensor | float, rng: Rng) -> Tensor:
    """Where applied, 0 or 1 with equal chance (x-flip, luma flip); float [n]."""
    value = torch.floor(rng.rand(n) * 2)
    return torch.where(applied(n, prob, rng), value, torch.zeros_like(value))


def quarter_turns(n: int, prob: Tensor | float, rng: Rng) -> Tensor:
    """Where applied, k uniform in {0, 1, 2, 3}; int64 [n]."""
    k = torch.floor(rng.rand(n) * 4).long()
    return torch.where(applied(n, prob, rng), k, torch.zeros_like(k))


def uniform(shape: tuple[int, ...], prob: Tensor | float, bound: float, rng: Rng) -> Tensor:
    """Where applied, uniform in [-bound, bound]. shape starts with n; one Bernoulli draw per image."""
    value = (rng.rand(*shape) * 2 - 1) * bound
    return torch.where(_per_image(applied(shape[0], prob, rng), len(shape)), value, torch.zeros_like(value))


def normal(shape: tuple[int, ...], prob: Tensor | float, std: float, rng: Rng) -> Tensor:
    """Where applied, normal with mean 0 and standard deviation std."""
    value = rng.randn(*shape) * std
    return torch.where(_per_image(applied(shape[0], prob, rng), len(shape)), value, torch.zeros_like(value))


def lognormal2(n: int, prob: Tensor | float, log2_std: float, rng: Rng) -> Tensor:
    """Where applied, 2 ** N(0, log2_std), whose natural log has std log2_std * ln 2; else 1."""
    value = torch.exp2(rng.randn(n) * log2_std)
    return torch.where(applied(n, prob, rng), value, torch.ones_like(value))


def half_normal(n: int, prob: Tensor | float, std: float, rng: Rng) -> Tensor:
    """Where applied, |N(0, std)| (the noise strength); else 0."""
    value = rng.randn(n).abs() * std
    return torch.where(applied(n, prob, rng), value, torch.zeros_like(value))


def rotation_prob(prob: Tensor | float) -> Tensor:
    """Probability of each of ADA's two arbitrary rotations, so that at least one happens with prob.

    The rotations come before and after the anisotropic scaling; 1 - (1 - q)^2 = prob gives
    q = 1 - sqrt(1 - prob).
    """
    return 1 - torch.sqrt((1 - torch.as_tensor(prob)).clamp(0, 1))


def keep_energy(t: Tensor, band_power: Tensor) -> Tensor:
    """Rescales band gains t [n, bands] so that sum(band_power * t^2) = 1 (band_power sums to 1)."""
    return t / (band_power * t.square()).sum(dim=-1, keepdim=True).sqrt()


def band_gains(n: int, prob: Tensor | float, band_strengths: tuple[float, ...], log2_std: float,
               band_power: tuple[float, ...], rng: Rng) -> Tensor:
    """Per-image gain of each frequency band, [n, bands].

    Each band b in turn is amplified, with probability prob * band_strengths[b], by a factor
    2 ** N(0, log2_std); that gain vector is rescaled so that an image with the expected power
    spectrum band_power keeps its energy. The rescaled vectors multiply up over the bands.
    """
    power = torch.tensor(band_power, device=rng.device)
    gains = torch.ones(n, len(band_power), device=rng.device)
    for band, strength in enumerate(band_strengths):
        amplification = lognormal2(n, prob * strength, log2_std, rng)
        t = torch.ones(n, len(band_power), device=rng.device)
        t[:, band] = amplification
        # Images whose band is left alone keep gains of exactly 1, so the filter can skip them.
        gains = gains * torch.where(amplification[:, None] != 1, keep_energy(t, power), t)
    return gains


def cutout_centres(n: int, rng: Rng) -> Tensor:
    """Cutout centres, uniform over the image in units of its size, [n, 2] (x, y)."""
    return rng.rand(n, 2)
