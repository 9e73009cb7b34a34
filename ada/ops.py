"""The small numerical building blocks of StyleGAN2, as pure functions on tensors.

Everything here is plain PyTorch (no compiled extension), so it runs the same on a laptop
CPU and on a GPU. Each function has a slow, obvious counterpart in the tests.

Conventions shared with the official stylegan2-ada-pytorch release (so that its
checkpoints import bit-compatibly): FIR filters are normalised to unit sum, padding is
given as (x0, x1, y0, y1), and the resampling filter is the [1, 3, 3, 1] binomial.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
# He-style gain that keeps the activation variance of a leaky ReLU near one.
LRELU_GAIN = math.sqrt(2.0)


def setup_filter(taps: list[float] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """The 2-D separable FIR filter (outer product of `taps`), normalised to unit sum."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d_reference(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with `f`, then keep every `down`-th pixel.

    The literal definition of FIR resampling. It is slow (it filters all the inserted
    zeros) and serves as the specification the fast paths below are tested against.
    """
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    kernel = (f * gain).flip([0, 1]).to(x.dtype)
    x = F.conv2d(x, kernel[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def _depthwise(kernel: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    return kernel.to(dtype)[None, None].expand(channels, 1, *kernel.shape)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling with the FIR filter `f` (4 taps), the image size doubling exactly.

    A stride-2 transposed convolution computes the zero-insert-then-filter definition
    without ever multiplying the inserted zeros: a quarter of the work.
    """
    c = x.shape[1]
    # A transposed convolution scatters each pixel through the kernel, which is already a true
    # convolution with it: unlike in the F.conv2d paths, `f` is not flipped here.
    kernel = _depthwise(f * 4, c, x.dtype)
    return F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=c)


def filter2d(x: torch.Tensor, f: torch.Tensor, padding: int, gain: float = 1.0) -> torch.Tensor:
    """Filter every channel with `f` after symmetric zero padding."""
    c = x.shape[1]
    kernel = _depthwise(f.flip([0, 1]) * gain, c, x.dtype)
    return F.conv2d(x, kernel, padding=padding, groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x downsampling with the FIR filter `f` (4 taps): filter and decimate in one strided pass."""
    c = x.shape[1]
    kernel = _depthwise(f.flip([0, 1]), c, x.dtype)
    return F.conv2d(x, kernel, stride=2, padding=1, groups=c)


def conv2d_up2(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A k x k convolution on the 2x-upsampled image: transposed conv, then the FIR filter.

    Matches the official `conv2d_resample(up=2, padding=k//2)` including its output size.
    """
    k = weight.shape[-1]
    x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
    # The transposed conv yields 2H + k - 2 pixels; the filter trims them back to 2H.
    pad = (f.shape[-1] + 2 - 1) // 2 + k // 2 - (k - 1)
    return filter2d(x, f, padding=pad, gain=4.0)


def conv2d_down2(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A k x k convolution followed by 2x downsampling, as the official `conv2d_resample(down=2)`."""
    k = weight.shape[-1]
    if k == 1:
        # Downsampling first is exact for a 1x1 conv and does the conv on a quarter of the pixels.
        return F.conv2d(downsample2d(x, f), weight)
    pad = k // 2 + (f.shape[-1] - 2 + 1) // 2
    return F.conv2d(filter2d(x, f, padding=pad), weight, stride=2)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply the activation, scale by `gain`, clamp to +-clamp."""
    return scale_bias_act(x, 1.0, b, activation, gain, clamp)


def scale_bias_act(
    x: torch.Tensor,
    scale: float,
    b: torch.Tensor | None,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """act(x * scale + b) * gain, clamped to +-clamp; b is per channel (dim 1).

    The leaky ReLU is positively homogeneous, act(z) * g = act(z * g) for g > 0, so both
    scales fold into one fused add (b * g + x * scale * g) and the activation then runs in
    place on that fresh tensor: two passes over the activations instead of four. `scale`
    lets a layer with an equalised learning rate skip scaling its weights.
    """
    if activation not in ("linear", "lrelu"):
        raise ValueError(f"unknown activation {activation!r}")
    if gain <= 0:
        x = x * scale if scale != 1 else x
        if b is not None:
            x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
        x = F.leaky_relu(x, LRELU_SLOPE) if activation == "lrelu" else x
        x = x * gain
    else:
        fresh = True
        if b is not None:
            b = b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
            x = torch.add(b * gain if gain != 1 else b, x, alpha=scale * gain)
        elif scale * gain != 1:
            x = x * (scale * gain)
        else:
            fresh = False
        if activation == "lrelu":
            # In place only on a tensor made here: the caller's x may be needed by its own graph.
            x = F.leaky_relu_(x, LRELU_SLOPE) if fresh else F.leaky_relu(x, LRELU_SLOPE)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def demodulate_bias_act(
    x: torch.Tensor,
    dcoefs: torch.Tensor | None,
    noise: torch.Tensor | None,
    b: torch.Tensor,
    activation: str = "lrelu",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """The tail of a synthesis layer in one fused pass: act(x * dcoefs + noise + b) * gain, clamped.

    x: [N, C, H, W] convolution output; dcoefs: [N, C] demodulation coefficients (None: 1);
    noise: anything that broadcasts to x (already scaled by its strength), or None.
    """
    if gain <= 0 or dcoefs is None:
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        if noise is not None:
            x = x + noise.to(x.dtype)
        return bias_act(x, b, activation, gain=gain, clamp=clamp)
    scale = (dcoefs * gain if gain != 1 else dcoefs).to(x.dtype)[:, :, None, None]
    bias = (b * gain if gain != 1 else b).to(x.dtype).reshape(1, -1, 1, 1)
    x = torch.addcmul(bias, x, scale)
    # addcmul's backward needs its inputs, not its output, so the rest may work in place.
    if noise is not None:
        x = x.add_((noise * gain if gain != 1 else noise).to(x.dtype))
    if activation == "lrelu":
        x = F.leaky_relu_(x, LRELU_SLOPE)
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}")
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the 'pixel norm' applied to z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample, per-output-channel 1/||w'|| of the modulated weight w' = w * s.

    sum_{i,k} (w[o,i,k] s[n,i])^2 = sum_i s[n,i]^2 * sum_k w[o,i,k]^2, so the [N, out]
    coefficients need only the [N, in] styles and the [out, in] squared-weight sums, not
    the [N, out, in, k, k] modulated weight tensor.
    """
    wsq = weight.square().sum(dim=[2, 3])
    return (styles.square() @ wsq.t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
    f: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution, computed by scaling activations instead of weights.

    conv(x, w * s) = conv(x * s, w) for per-input-channel styles s, and demodulation is a
    per-output-channel scale afterwards, so one shared-weight convolution serves the whole
    batch. x: [N, in, H, W]; weight: [out, in, k, k]; styles: [N, in].
    """
    x, dcoefs = modulated_conv2d_parts(x, weight, styles, demodulate, up, f)
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
    return x


def modulated_conv2d_parts(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
    f: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`modulated_conv2d` before its demodulation: (conv(x * s, w), [N, out] coefficients or None).

    Left apart so that a layer can fold the coefficients into its bias and activation pass.
    """
    if demodulate and x.dtype == torch.float16:
        # Demodulation cancels any scale of w and s, so shrink both to keep the float16
        # intermediate sums far from overflow.
        weight = weight / (math.sqrt(weight[0].numel()) * weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None
    if weight.shape[-1] == 1 and not up:
        return modulated_conv1x1(x, weight, styles), dcoefs
    x = x * styles.to(x.dtype)[:, :, None, None]
    w = weight.to(x.dtype)
    if up:
        assert f is not None
        x = conv2d_up2(x, w, f)
    else:
        x = F.conv2d(x, w, padding=weight.shape[-1] // 2)
    return x, dcoefs


def modulated_conv1x1(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """A modulated 1x1 convolution as one batched matrix product with per-sample [out, in] weights.

    Those weights are small (toRGB has 3 outputs), so building them costs less than scaling
    the activations, and forward and backward each read the activations once fewer.
    """
    n, c, h, w = x.shape
    wn = (weight[:, :, 0, 0].unsqueeze(0) * styles.unsqueeze(1)).to(x.dtype)  # [N, out, in]
    if x.is_contiguous():
        return torch.bmm(wn, x.reshape(n, c, h * w)).reshape(n, -1, h, w)
    if x.is_contiguous(memory_format=torch.channels_last):
        y = torch.bmm(x.permute(0, 2, 3, 1).reshape(n, h * w, c), wn.transpose(1, 2))
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
    return F.conv2d(x * styles.to(x.dtype)[:, :, None, None], weight.to(x.dtype))


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append the standard deviation across a group of samples as extra feature maps.

    Group members are samples i, i + N/G, i + 2N/G, ... (the official layout, so imported
    discriminators see the same statistics).
    """
    n, c, h, w = x.shape
    g = min(group_size, n) if group_size else n
    if n % g != 0:
        raise ValueError(f"minibatch-stddev group size {g} does not divide the batch size {n}")
    y = x.reshape(g, -1, num_channels, c // num_channels, h, w).float()
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])
    y = y.reshape(-1, num_channels, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)
