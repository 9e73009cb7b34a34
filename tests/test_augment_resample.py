"""Resampling quality, the wavelet filters, the band filter and the colour matrices."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augment import matrices
from augment.color import apply_color
from augment.geometric import blit, is_blit, resample, warp_bilinear
from augment.imgfilter import band_filter
from augment.wavelets import SYM2, SYM6, band_filters

f64 = torch.float64


def smooth_image(size, max_freq, seed=0, n=1):
    """A sum of random cosines up to max_freq cycles per pixel, values about [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size, dtype=f64), torch.arange(size, dtype=f64), indexing="ij")
    out = torch.zeros(n, 1, size, size, dtype=f64)
    for i in range(n):
        for _ in range(5):
            fx, fy = ((torch.rand(2, generator=g, dtype=f64) * 2 - 1) * max_freq).tolist()
            phase = float(torch.rand(1, generator=g, dtype=f64)) * 2 * math.pi
            out[i, 0] += torch.cos(2 * math.pi * (fx * x + fy * y) + phase) / 5
    return out


def rotation(theta, dtype=f64):
    t = torch.as_tensor(theta, dtype=dtype).reshape(-1)
    return matrices.rotate2d(torch.cos(t), torch.sin(t))


@pytest.mark.parametrize("taps", [SYM2, SYM6])
def test_wavelet_lowpass_is_orthonormal(taps):
    h = np.asarray(taps)
    assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-10)
    for shift in range(len(h) // 2):
        assert np.dot(h[: len(h) - 2 * shift], h[2 * shift:]) == pytest.approx(float(shift == 0), abs=1e-10)


def test_band_filters_are_zero_phase_and_sum_to_an_impulse():
    bank = band_filters()
    assert bank.shape == (4, 43)
    assert np.allclose(bank, bank[:, ::-1], atol=1e-15)
    impulse = np.zeros(43)
    impulse[21] = 1
    assert np.allclose(bank.sum(axis=0), impulse, atol=1e-10)
    # The lowest band passes DC; the other three block it.
    assert np.allclose(bank.sum(axis=1), [1, 0, 0, 0], atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 13, 21), (2, 1, 32, 32)])
@pytest.mark.parametrize("dense", [True, False])
def test_identity_map_reproduces_the_input(shape, dense):
    x = torch.rand(shape, dtype=f64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eye = torch.eye(3, dtype=f64).repeat(shape[0], 1, 1)
    assert (resample(x, eye, dense=dense) - x).abs().max() < 1e-9
    assert (resample(x.float(), eye.float(), dense=dense) - x.float()).abs().max() < 1e-4


def test_integer_shifts_read_the_reflected_image():
    x = torch.rand(1, 1, 12, 12, dtype=f64, generator=torch.Generator().manual_seed(0))
    shifted = resample(x, matrices.translate2d(torch.tensor([[-3.0, 2.0]], dtype=f64)))
    # Output pixel (row r, column c) reads input (r + 2, c - 3), mirrored about the edge pixels.
    expected = F.pad(x, (3, 0, 0, 2), mode="reflect")[:, :, 2:, :12]
    assert (shifted - expected).abs().max() < 1e-9
    assert torch.equal(blit(x, matrices.translate2d(torch.tensor([[-3.0, 2.0]], dtype=f64))), expected)


def test_quarter_turn_through_the_rotation_path_matches_rot90():
    # sym6 is not symmetric: a turned image sees its filters reversed, which delays it by a fraction
    # of a pixel. On smooth content that costs at most 0.03 away from the border.
    x = smooth_image(32, max_freq=0.05, n=3)
    y = resample(x, rotation([math.pi / 2] * 3))
    exact = torch.rot90(x, 1, dims=(2, 3))
    assert (y - exact)[..., 4:-4, 4:-4].abs().max() < 0.03
    assert (resample(x, rotation([-math.pi / 2] * 3)) - exact)[..., 4:-4, 4:-4].abs().max() > 0.3
    # The exact path for whole-pixel moves has no such error.
    turn = matrices.quarter_turns(torch.ones(3, dtype=torch.long), x)
    assert is_blit(turn, 32, 32).all() and torch.equal(blit(x, turn), exact)


def test_rotating_there_and_back_beats_plain_bilinear():
    x = smooth_image(32, max_freq=0.15, seed=1)

    def plain(image, theta):
        c, s = math.cos(theta), math.sin(theta)
        t = torch.tensor([[c, -s, 0], [s, c, 0]], dtype=f64)
        grid = F.affine_grid(t[None], list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, align_corners=False, padding_mode="reflection")

    ours = resample(resample(x, rotation(math.pi / 6)), rotation(-math.pi / 6))
    naive = plain(plain(x, math.pi / 6), -math.pi / 6)
    error_ours = (ours - x)[..., 8:-8, 8:-8].abs().max()
    error_naive = (naive - x)[..., 8:-8, 8:-8].abs().max()
    assert error_ours < 0.03 and error_ours < error_naive / 2


def test_dense_and_convolution_paths_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 24, 28, dtype=f64, generator=g)
    theta = torch.rand(3, dtype=f64, generator=g) * 6 - 3
    stretch = matrices.scale2d(torch.tensor([0.8, 1.0, 1.3], dtype=f64), torch.ones(3, dtype=f64))
    maps = rotation(theta) @ stretch
    maps = maps @ matrices.translate2d(torch.tensor([[1.5, -2.25], [0.0, 3.0], [-4.0, 0.5]], dtype=f64))
    assert (resample(x, maps, dense=True) - resample(x, maps, dense=False)).abs().max() < 1e-10
    gains = torch.rand(3, 4, dtype=f64, generator=g) * 2
    bank = torch.from_numpy(band_filters())
    dense, conv = band_filter(x, gains, bank, dense=True), band_filter(x, gains, bank, dense=False)
    assert (dense - conv).abs().max() < 1e-10


def test_band_filter_identity_and_dc():
    bank = torch.from_numpy(band_filters())
    x = torch.rand(2, 3, 8, 16, dtype=f64, generator=torch.Generator().manual_seed(0))
    assert (band_filter(x, torch.ones(2, 4, dtype=f64), bank) - x).abs().max() < 1e-9
    flat = torch.full((1, 1, 16, 16), 0.5, dtype=f64)
    boosted = band_filter(flat, torch.tensor([[2.0, 3.0, 0.1, 5.0]], dtype=f64), bank)
    # The same 1-D filter runs along both axes, so a flat image sees the lowest band's gain squared.
    assert torch.allclose(boosted, 4 * flat, atol=1e-9)


def test_colour_matrices():
    theta = torch.tensor([0.7, -2.0])
    grey = torch.tensor([0.3, 0.3, 0.3, 1.0])
    colour = torch.tensor([0.9, -0.2, 0.4, 1.0])
    hue = matrices.hue3d(theta)
    assert torch.allclose(hue @ grey, grey.expand(2, 4), atol=1e-6)
    rgb = hue[:, :3, :3]
    assert torch.allclose(rgb @ rgb.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(matrices.hue3d(torch.tensor([2 * math.pi / 3]))[0] @ colour,
                          colour[[2, 0, 1, 3]], atol=1e-6)
    flip = matrices.lumaflip3d(torch.tensor([1.0]))[0]
    assert torch.allclose(flip @ grey, torch.tensor([-0.3, -0.3, -0.3, 1.0]), atol=1e-6)
    assert torch.allclose(flip @ flip, torch.eye(4), atol=1e-6)
    desaturated = matrices.saturation3d(torch.tensor([0.0]))[0] @ colour
    assert torch.allclose(desaturated[:3], colour[:3].mean().expand(3), atol=1e-6)
    assert torch.allclose(matrices.brightness3d(torch.tensor([0.25]))[0] @ colour,
                          colour + torch.tensor([0.25, 0.25, 0.25, 0.0]))
    for m in [matrices.hue3d(torch.zeros(1)), matrices.saturation3d(torch.ones(1)),
              matrices.lumaflip3d(torch.zeros(1)), matrices.contrast3d(torch.ones(1))]:
        assert torch.equal(m[0], torch.eye(4))


def test_one_channel_colour_is_the_mean_of_the_grey_rgb_result():
    g = torch.Generator().manual_seed(0)
    colour = (matrices.saturation3d(torch.tensor([0.3, 2.0])) @ matrices.hue3d(torch.tensor([1.0, -0.5]))
              @ matrices.lumaflip3d(torch.tensor([1.0, 0.0])) @ matrices.contrast3d(torch.tensor([1.5, 0.7]))
              @ matrices.brightness3d(torch.tensor([0.1, -0.2])))
    x = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    as_rgb = apply_color(x.expand(-1, 3, -1, -1), colour)
    assert torch.allclose(apply_color(x, colour), as_rgb.mean(dim=1, keepdim=True), atol=1e-6)
    # Hue and saturation leave grey alone: brightness, then contrast, then the flip remain.
    expected = torch.stack([-1.5 * (x[0] + 0.1), 0.7 * (x[1] - 0.2)])
    assert torch.allclose(apply_color(x, colour), expected, atol=1e-6)


@pytest.mark.parametrize("dtype, tolerance", [(f64, 1e-10), (torch.float32, 1e-4)])
def test_kornia_warp_samples_where_torch_grid_sampling_does(dtype, tolerance):
    # The warp's grid sampling is kornia's warp_affine; it must put the samples exactly where torch's
    # affine_grid + grid_sample with align_corners=False do (kornia before 0.9 did not).
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 20, 24, dtype=f64, generator=gen).to(dtype)
    maps = torch.eye(3, dtype=f64).repeat(4, 1, 1)
    maps[:, :2, :2] += 0.3 * torch.randn(4, 2, 2, dtype=f64, generator=gen)
    maps[:, :2, 2] = torch.randn(4, 2, dtype=f64, generator=gen) * 3
    maps = maps.to(dtype)
    size = (18, 26)
    to_unit = torch.tensor([[2 / 24, 0, 1 / 24 - 1], [0, 2 / 20, 1 / 20 - 1], [0, 0, 1]], dtype=dtype)
    from_unit = torch.tensor([[13, 0, 12.5], [0, 9, 8.5], [0, 0, 1]], dtype=dtype)
    grid = F.affine_grid((to_unit @ maps @ from_unit)[:, :2], [4, 2, *size], align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert (warp_bilinear(x, maps, size) - expected).abs().max() < tolerance
    assert torch.allclose(matrices.affine_inverse(maps) @ maps, torch.eye(3, dtype=dtype).expand(4, 3, 3),
                          atol=tolerance)
