"""Each op of ada.ops against a slow, literal reference written out here.

The references follow the official stylegan2-ada-pytorch definitions: FIR resampling is
"insert zeros, pad, convolve with the filter, keep every down-th pixel" (a true convolution,
so the filter is flipped), a k x k convolution on the 2x-upsampled image convolves with the
flipped weight (as the official modulated convolution does on its upsampling path), and the
padding of a resampling convolution keeps the image size exactly 2H or H/2. Random
asymmetric filters and non-square images catch flips and x/y swaps the symmetric [1,3,3,1]
filter would hide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ada import ops

F64 = torch.float64


def naive_upfirdn(x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int], gain=1.0):
    """Pixel by pixel: zero insertion, padding (negative crops), convolution, decimation."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    z = np.zeros([n, c, h * up, w * up])
    z[:, :, ::up, ::up] = x
    # Padded pixel (Y, X) is z[Y - py0, X - px0], zero outside z; a negative pad crops.
    big = np.zeros([n, c, h * up + py0 + py1, w * up + px0 + px1])
    for yy in range(big.shape[2]):
        for xx in range(big.shape[3]):
            if 0 <= yy - py0 < h * up and 0 <= xx - px0 < w * up:
                big[:, :, yy, xx] = z[:, :, yy - py0, xx - px0]
    fh, fw = f.shape
    out_h, out_w = big.shape[2] - fh + 1, big.shape[3] - fw + 1
    out = np.zeros([n, c, out_h, out_w])
    for yy in range(out_h):
        for xx in range(out_w):
            window = big[:, :, yy : yy + fh, xx : xx + fw]
            # True convolution: the filter tap (i, j) meets the pixel at offset (fh-1-i, fw-1-j).
            out[:, :, yy, xx] = (window * f[::-1, ::-1] * gain).sum(axis=(2, 3))
    return out[:, :, ::down, ::down]


def correlate(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Valid cross-correlation written out as a sum over kernel offsets (no F.conv2d)."""
    k = w.shape[-1]
    ho, wo = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = 0
    for a in range(k):
        for b in range(k):
            out = out + torch.einsum("nihw,oi->nohw", x[:, :, a : a + ho, b : b + wo], w[:, :, a, b])
    return out[:, :, ::stride, ::stride]


def ref_conv_up2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Zero insertion, FIR filter (gain 4), then a true k x k convolution (the flipped weight)."""
    k, fw = w.shape[-1], f.shape[-1]
    p0, p1 = k // 2 + (fw + 1) // 2, k // 2 + (fw - 2) // 2
    y = ops.upfirdn2d_reference(x, f, up=2, padding=(p0, p1, p0, p1), gain=4)
    return correlate(y, w.flip([2, 3]))


def ref_conv_down2(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """FIR filter, then a k x k cross-correlation at stride 2 (the official D's orientation)."""
    p = w.shape[-1] // 2 + (f.shape[-1] - 1) // 2
    return correlate(ops.upfirdn2d_reference(x, f, padding=(p, p, p, p)), w, stride=2)


@pytest.fixture
def filters():
    torch.manual_seed(0)
    asym = torch.rand(4, 4, dtype=F64) + 0.1
    return {"binomial": ops.setup_filter([1, 3, 3, 1]).to(F64), "asymmetric": asym / asym.sum()}


@pytest.mark.parametrize(
    "up, down, pad", [(1, 1, (1, 2, 0, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (2, 2, (3, -1, 0, 2))]
)
def test_upfirdn2d_reference_is_the_literal_definition(filters, up, down, pad):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 6, dtype=F64)
    f = filters["asymmetric"]
    got = ops.upfirdn2d_reference(x, f, up=up, down=down, padding=pad, gain=1.5)
    expected = naive_upfirdn(x.numpy(), f.numpy(), up, down, pad, gain=1.5)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["binomial", "asymmetric"])
def test_upsample_and_downsample_match_the_reference(filters, kind):
    f = filters[kind]
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 8, dtype=F64)
    up = ops.upsample2d(x, f)
    assert up.shape == (2, 3, 12, 16)
    expected = ops.upfirdn2d_reference(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    torch.testing.assert_close(up, expected, atol=1e-12, rtol=0)
    down = ops.downsample2d(x, f)
    assert down.shape == (2, 3, 3, 4)
    expected = ops.upfirdn2d_reference(x, f, down=2, padding=(1, 1, 1, 1))
    torch.testing.assert_close(down, expected, atol=1e-12, rtol=0)


def test_binomial_resampling_keeps_a_constant_image(filters):
    # The binomial filter's polyphase parts each sum to 1/4, so a constant stays constant away from the border.
    ones = torch.ones(1, 1, 8, 8, dtype=F64)
    assert torch.allclose(ops.upsample2d(ones, filters["binomial"])[..., 2:-2, 2:-2], torch.ones(12, 12, dtype=F64))
    assert torch.allclose(ops.downsample2d(ones, filters["binomial"])[..., 1:-1, 1:-1], torch.ones(2, 2, dtype=F64))


@pytest.mark.parametrize("kind", ["binomial", "asymmetric"])
@pytest.mark.parametrize("k", [1, 3])
def test_resampling_convolutions_match_zero_insertion_and_explicit_convolution(filters, kind, k):
    f = filters[kind]
    torch.manual_seed(3)
    x = torch.randn(2, 4, 6, 8, dtype=F64)
    w = torch.randn(5, 4, k, k, dtype=F64)
    up = ops.conv2d_up2(x, w, f)
    assert up.shape == (2, 5, 12, 16)
    torch.testing.assert_close(up, ref_conv_up2(x, w, f), atol=1e-10, rtol=0)
    down = ops.conv2d_down2(x, w, f)
    assert down.shape == (2, 5, 3, 4)
    torch.testing.assert_close(down, ref_conv_down2(x, w, f), atol=1e-10, rtol=0)


def per_sample_weights(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """The official formulation: w'[n,o,i,a,b] = w[o,i,a,b] s[n,i], each output filter scaled to unit norm."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    return w


def ref_modulated_conv(x, weight, styles, demodulate, up, f):
    n, c, h, wd = x.shape
    w = per_sample_weights(weight, styles, demodulate)
    if up:
        return torch.cat([ref_conv_up2(x[i : i + 1], w[i], f) for i in range(n)])
    # One grouped convolution with a separate weight per sample, as the official fused path does.
    out = torch.nn.functional.conv2d(
        x.reshape(1, n * c, h, wd), w.reshape(-1, c, *weight.shape[2:]), padding=weight.shape[-1] // 2, groups=n
    )
    return out.reshape(n, -1, *out.shape[2:])


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up", [False, True])
def test_modulated_conv2d_matches_per_sample_weights(filters, demodulate, up):
    f = filters["binomial"]
    torch.manual_seed(5)
    x = torch.randn(3, 4, 6, 6, dtype=F64)
    weight = torch.randn(5, 4, 3, 3, dtype=F64)
    styles = torch.randn(3, 4, dtype=F64) + 1
    got = ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, f=f)
    expected = ref_modulated_conv(x, weight, styles, demodulate, up, f)
    assert got.shape == (3, 5, 12 if up else 6, 12 if up else 6)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    # float32, as training runs it
    got32 = ops.modulated_conv2d(x.float(), weight.float(), styles.float(), demodulate, up, f.float())
    torch.testing.assert_close(got32, expected.float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("up", [False, True])
def test_modulated_conv2d_in_float16_does_not_overflow(filters, up):
    # Large weights and styles: x * s convolved with w would pass float16's 65504 if the op did not
    # rescale both first (demodulation cancels any scale of them).
    f = filters["binomial"].float()
    torch.manual_seed(10)
    x = torch.randn(2, 8, 6, 6)
    weight = torch.randn(4, 8, 3, 3) * 50
    styles = torch.randn(2, 8) * 100
    expected = ops.modulated_conv2d(x, weight, styles, up=up, f=f)
    got = ops.modulated_conv2d(x.half(), weight, styles, up=up, f=f)
    assert got.dtype == torch.float16 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.float(), expected, atol=1e-2, rtol=1e-2)


def test_modulated_1x1_conv_without_demodulation(filters):
    # toRGB: a 1x1 modulated conv is a per-sample matrix product over channels.
    torch.manual_seed(6)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    weight = torch.randn(3, 4, 1, 1, dtype=F64)
    styles = torch.randn(2, 4, dtype=F64)
    expected = torch.einsum("nihw,oi,ni->nohw", x, weight[:, :, 0, 0], styles)
    torch.testing.assert_close(ops.modulated_conv2d(x, weight, styles, demodulate=False), expected)


def test_demodulation_coefficients_match_the_explicit_formula():
    torch.manual_seed(7)
    weight = torch.randn(6, 5, 3, 3, dtype=F64)
    styles = torch.randn(4, 5, dtype=F64)
    expected = torch.empty(4, 6, dtype=F64)
    for n in range(4):
        for o in range(6):
            total = sum(float((weight[o, i] * styles[n, i]).square().sum()) for i in range(5))
            expected[n, o] = 1 / math.sqrt(total + 1e-8)
    torch.testing.assert_close(ops.demodulation_coefficients(weight, styles), expected, atol=1e-12, rtol=1e-12)
    # and it is what the per-sample weight tensor would give
    w = per_sample_weights(weight, styles, demodulate=False)
    torch.testing.assert_close(expected, (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demodulation_keeps_unit_variance(seed):
    # With i.i.d. unit-variance inputs, each demodulated output pixel is a unit-norm combination
    # of its inputs, so its variance is exactly 1 in expectation, whatever the styles' scale.
    # 4 x 64 channels x 30 x 30 interior pixels: over ten seeds the estimate stayed within 0.012 of 1;
    # the tolerance is 0.05.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 64, 32, 32, generator=gen)
    weight = torch.randn(64, 64, 3, 3, generator=gen)
    styles = torch.randn(4, 64, generator=gen) * 3 + 0.5
    out = ops.modulated_conv2d(x, weight, styles, demodulate=True)
    interior = out[:, :, 1:-1, 1:-1]  # border pixels see zero padding
    assert abs(float(interior.var()) - 1) < 0.05
    # Without demodulation the scale of the styles goes straight through.
    raw = ops.modulated_conv2d(x, weight, styles, demodulate=False)[:, :, 1:-1, 1:-1]
    assert float(raw.var()) > 20


def hand_minibatch_stddev(x: torch.Tensor, group: int, num_channels: int) -> torch.Tensor:
    n, c, h, w = x.shape
    groups = n // group
    extra = torch.empty(n, num_channels, h, w, dtype=x.dtype)
    for i in range(n):
        members = [j for j in range(n) if j % groups == i % groups]  # i, i + N/G, i + 2N/G, ...
        per = c // num_channels
        for f in range(num_channels):
            block = x[members, f * per : (f + 1) * per]  # [G, c, H, W]
            mean = sum(block[g] for g in range(len(members))) / len(members)
            var = sum((block[g] - mean) ** 2 for g in range(len(members))) / len(members)
            extra[i, f] = float((var + 1e-8).sqrt().mean())
    return torch.cat([x, extra], dim=1)


@pytest.mark.parametrize("n, group, num_channels", [(8, 4, 1), (8, 2, 2), (4, 4, 1), (3, 8, 1), (6, 0, 3)])
def test_minibatch_stddev_matches_a_hand_loop(n, group, num_channels):
    torch.manual_seed(8)
    x = torch.randn(n, 6, 3, 2)
    got = ops.minibatch_stddev(x, group, num_channels)
    g = min(group, n) if group else n
    assert got.shape == (n, 6 + num_channels, 3, 2)
    torch.testing.assert_close(got, hand_minibatch_stddev(x, g, num_channels), atol=1e-6, rtol=1e-6)


def test_minibatch_stddev_group_must_divide_the_batch():
    with pytest.raises(ValueError, match="group size 4 does not divide the batch size 6"):
        ops.minibatch_stddev(torch.randn(6, 2, 2, 2), 4)


def test_bias_act():
    torch.manual_seed(9)
    x = torch.randn(2, 3, 4, 4) * 100
    b = torch.randn(3)
    y = x + b[None, :, None, None]
    torch.testing.assert_close(ops.bias_act(x, b), y)
    lrelu = torch.where(y > 0, y, 0.2 * y) * math.sqrt(2)
    torch.testing.assert_close(ops.bias_act(x, b, "lrelu", gain=math.sqrt(2)), lrelu)
    clamped = ops.bias_act(x, b, "lrelu", gain=math.sqrt(2) * 0.5, clamp=64)
    torch.testing.assert_close(clamped, (lrelu * 0.5).clamp(-64, 64))
    assert float(clamped.abs().max()) == 64
    # 2-D input (dense layers) and no bias
    v = torch.randn(5, 3)
    torch.testing.assert_close(ops.bias_act(v, b, "lrelu"), torch.nn.functional.leaky_relu(v + b, 0.2))
    torch.testing.assert_close(ops.bias_act(v, None, gain=3.0), v * 3)
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        ops.bias_act(v, b, "relu")


def test_normalize_2nd_moment():
    z = torch.randn(5, 7) * 4
    out = ops.normalize_2nd_moment(z)
    torch.testing.assert_close(out.square().mean(dim=1), torch.ones(5))
    torch.testing.assert_close(out / out.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True))
