"""gradcheck (float64, tiny images) of every transform group with respect to the input images.

Multi-channel batches use gradcheck's fast mode (random projections of the Jacobian) to keep the
run short; the full Jacobian is checked on one-channel images.
"""

import math

import pytest
import torch
from torch.autograd import gradcheck

from augment import AugmentPipe, matrices
from augment.color import apply_color
from augment.geometric import blit, resample
from augment.imgfilter import band_filter
from augment.wavelets import band_filters

f64 = torch.float64


def images(n=2, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=f64) * 2 - 1).requires_grad_()


def some_maps():
    theta = torch.tensor([0.6, -2.2], dtype=f64)
    maps = matrices.rotate2d(torch.cos(theta), torch.sin(theta))
    maps = maps @ matrices.scale2d(torch.tensor([0.8, 1.2], dtype=f64), torch.tensor([1.1, 0.9], dtype=f64))
    return maps @ matrices.translate2d(torch.tensor([[0.7, -1.3], [2.0, 0.25]], dtype=f64))


@pytest.mark.parametrize("dense", [True, False])
def test_geometric_resampling(dense):
    maps = some_maps()
    assert gradcheck(lambda x: resample(x, maps, dense=dense), (images(),), fast_mode=True)
    assert gradcheck(lambda x: resample(x, maps[:1], dense=dense), (images(n=1, c=1),))


def test_whole_pixel_moves():
    maps = matrices.quarter_turns(torch.tensor([1, 2]), images()) @ matrices.translate2d(
        torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=f64))
    assert gradcheck(lambda x: blit(x, maps), (images(),), fast_mode=True)
    assert gradcheck(lambda x: blit(x, maps[:1]), (images(n=1, c=1),))


@pytest.mark.parametrize("channels", [1, 3])
def test_colour(channels):
    colour = (matrices.saturation3d(torch.tensor([0.5, 1.7], dtype=f64))
              @ matrices.hue3d(torch.tensor([1.0, -2.5], dtype=f64))
              @ matrices.lumaflip3d(torch.tensor([1.0, 0.0], dtype=f64))
              @ matrices.contrast3d(torch.tensor([1.4, 0.6], dtype=f64))
              @ matrices.brightness3d(torch.tensor([0.1, -0.3], dtype=f64)))
    assert gradcheck(lambda x: apply_color(x, colour), (images(c=channels),), fast_mode=True)
    assert gradcheck(lambda x: apply_color(x, colour[:1]), (images(n=1, c=channels, h=4, w=4),))


def test_image_filter_dense():
    bank = torch.from_numpy(band_filters())
    gains = torch.tensor([[1.5, 0.5, 2.0, 0.8], [0.7, 1.0, 1.3, 3.0]], dtype=f64)
    assert gradcheck(lambda x: band_filter(x, gains, bank, dense=True), (images(),), fast_mode=True)
    assert gradcheck(lambda x: band_filter(x, gains[:1], bank, dense=True), (images(n=1, c=1),))


def test_image_filter_convolution():
    bank = torch.from_numpy(band_filters())
    gains = torch.tensor([[1.5, 0.5, 2.0, 0.8]], dtype=f64)
    x = images(n=1, c=1, h=22, w=22)
    assert gradcheck(lambda x: band_filter(x, gains, bank, dense=False), (x,), fast_mode=True)


@pytest.mark.parametrize("preset", ["noise", "cutout", "bgcfnc"])
def test_pipeline_groups_and_the_whole_pipeline(preset):
    pipe = AugmentPipe(preset, p=1.0)
    params = pipe.sample(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert gradcheck(lambda x: pipe.apply(x, params), (images(),), fast_mode=True)


def test_gradient_is_the_adjoint_for_a_rotation():
    # <A x, y> = <x, A^T y> for the linear map A: a check of the backward pass beyond finite differences.
    theta = torch.tensor([math.pi / 5], dtype=f64)
    maps = matrices.rotate2d(torch.cos(theta), torch.sin(theta))
    x = images(n=1, c=1, h=16, w=16)
    y = torch.randn(1, 1, 16, 16, dtype=f64, generator=torch.Generator().manual_seed(2))
    (adjoint_y,) = torch.autograd.grad((resample(x, maps) * y).sum(), x)
    assert torch.allclose((resample(x, maps) * y).sum(), (x * adjoint_y).sum())
