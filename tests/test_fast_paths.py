"""The fused fast paths of ada.ops / ada.networks against the plain sequence of operations they replace.

Each fast path folds scales into one pass, runs activations in place, or swaps a convolution
for a batched matrix product. Training differentiates through them twice (R1 and path-length
regularisation), so outputs, gradients and second-order gradients are all compared with the
obvious formulas written out here.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ada import ops
from ada.discriminator import Conv2dLayer, Discriminator
from ada.networks import FullyConnectedLayer, Generator, SynthesisLayer, ToRGBLayer

SLOPE = 0.2


def plain_bias_act(x, b, activation, gain, clamp=None):
    if b is not None:
        x = x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, SLOPE)
    x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def first_and_second_order(fn, inputs, seed=0):
    """fn(*inputs), the gradients of a random projection of it, and the gradients of their squared norm."""
    out = fn(*inputs)
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * proj).sum(), inputs, create_graph=True)
    norm = sum(g.square().sum() for g in grads)
    if not norm.requires_grad:  # a piecewise-linear map of its inputs: no second-order terms
        return out, grads, [torch.zeros_like(t) for t in inputs]
    second = torch.autograd.grad(norm, inputs, allow_unused=True)
    return out, grads, [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, second, strict=True)]


def compare(fast, plain, inputs, rtol=1e-4, atol=1e-4):
    results = []
    for fn in (fast, plain):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        results.append(first_and_second_order(fn, leaves))
    (out_f, g_f, s_f), (out_p, g_p, s_p) = results
    assert_close(out_f, out_p, rtol, atol)
    for a, b in zip(g_f, g_p, strict=True):
        assert_close(a, b, rtol, atol)
    for a, b in zip(s_f, s_p, strict=True):
        assert_close(a, b, rtol, atol)


@pytest.mark.parametrize("activation", ["linear", "lrelu"])
@pytest.mark.parametrize("scale, gain, clamp", [(1.0, 1.0, None), (0.3, math.sqrt(2), None), (1.7, 0.5, 0.4)])
def test_scale_bias_act_matches_plain_sequence(activation, scale, gain, clamp):
    x = torch.randn(4, 6, 5, 5)
    b = torch.randn(6)
    compare(
        lambda x, b: ops.scale_bias_act(x, scale, b, activation, gain, clamp),
        lambda x, b: plain_bias_act(x * scale, b, activation, gain, clamp),
        [x, b],
    )
    compare(
        lambda x: ops.scale_bias_act(x, scale, None, activation, gain, clamp),
        lambda x: plain_bias_act(x * scale, None, activation, gain, clamp),
        [x],
    )


def test_bias_act_on_2d_input_and_negative_gain():
    x = torch.randn(5, 7)
    b = torch.randn(7)
    compare(lambda x, b: ops.bias_act(x, b, "lrelu", 1.3), lambda x, b: plain_bias_act(x, b, "lrelu", 1.3), [x, b])
    # A negative gain cannot be folded into the leaky ReLU: the plain order must be kept.
    compare(lambda x, b: ops.bias_act(x, b, "lrelu", -0.5), lambda x, b: plain_bias_act(x, b, "lrelu", -0.5), [x, b])


def test_in_place_activation_leaves_the_callers_tensor_alone():
    x = torch.randn(3, 4, 2, 2, requires_grad=True)
    y = x * 1.0
    before = y.detach().clone()
    out = ops.bias_act(y, None, "lrelu", gain=1.0)
    assert torch.equal(y.detach(), before)
    out.sum().backward()  # an in-place write on y would make this raise
    assert torch.equal(x.grad, torch.where(before > 0, 1.0, SLOPE))


def test_bias_act_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(torch.zeros(1, 1), None, "tanh")


@pytest.mark.parametrize("noise_kind", ["per_sample", "const", "none"])
@pytest.mark.parametrize("gain, clamp", [(math.sqrt(2), None), (0.8, 0.3)])
def test_demodulate_bias_act_matches_plain_sequence(noise_kind, gain, clamp):
    x = torch.randn(4, 6, 5, 5)
    dcoefs = torch.rand(4, 6) + 0.5
    b = torch.randn(6)
    noise = {"per_sample": torch.randn(4, 1, 5, 5), "const": torch.randn(5, 5), "none": None}[noise_kind]

    def plain(x, d, b, *noise):
        x = x * d[:, :, None, None]
        if noise:
            x = x + noise[0]
        return plain_bias_act(x, b, "lrelu", gain, clamp)

    inputs = [x, dcoefs, b] + ([noise] if noise is not None else [])
    compare(lambda x, d, b, *n: ops.demodulate_bias_act(x, d, n[0] if n else None, b, "lrelu", gain, clamp),
            plain, inputs)


def test_demodulate_bias_act_without_coefficients_is_bias_act():
    x, b, noise = torch.randn(2, 3, 4, 4), torch.randn(3), torch.randn(2, 1, 4, 4)
    assert_close(ops.demodulate_bias_act(x, None, noise, b, "linear", 1.0), x + noise + b[None, :, None, None])


def per_sample_weight_conv(x, weight, styles, demodulate):
    """The definition: convolve each sample with its own modulated (and demodulated) weight."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n][None, :, None, None]
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        outs.append(F.conv2d(x[n : n + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_modulated_1x1_conv_by_batched_matmul(demodulate, layout):
    x = torch.randn(3, 5, 4, 4)
    weight = torch.randn(2, 5, 1, 1)
    styles = torch.randn(3, 5)

    def fast(x, w, s):
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = x.transpose(2, 3)  # neither layout: the plain convolution takes it
        return ops.modulated_conv2d(x, w, s, demodulate=demodulate)

    def plain(x, w, s):
        return per_sample_weight_conv(x.transpose(2, 3) if layout == "strided" else x, w, s, demodulate)

    compare(fast, plain, [x, weight, styles])


def test_channels_last_1x1_output_keeps_the_layout():
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    y = ops.modulated_conv1x1(x, torch.randn(3, 4, 1, 1), torch.randn(2, 4))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("up", [False, True])
def test_modulated_conv2d_parts_recombine_to_the_definition(up):
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 4, 4, 4), torch.randn(3, 4, 3, 3), torch.randn(2, 4)
    f = ops.setup_filter([1, 3, 3, 1])
    y, dcoefs = ops.modulated_conv2d_parts(x, weight, styles, up=up, f=f)
    combined = y * dcoefs[:, :, None, None]
    assert_close(combined, ops.modulated_conv2d(x, weight, styles, up=up, f=f))
    if not up:
        assert_close(combined, per_sample_weight_conv(x, weight, styles, demodulate=True))


def randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim <= 1 else 1.0))
    return module


@pytest.mark.parametrize("activation, bias, lr_multiplier", [
    ("linear", True, 1.0), ("lrelu", True, 0.01), ("lrelu", False, 1.0), ("linear", False, 0.5),
])
def test_fully_connected_layer_matches_its_formula(activation, bias, lr_multiplier):
    layer = randomise(FullyConnectedLayer(6, 5, bias=bias, activation=activation, lr_multiplier=lr_multiplier))
    gain = math.sqrt(2) if activation == "lrelu" else 1.0

    def plain(x):
        w = layer.weight * (lr_multiplier / math.sqrt(6))
        b = layer.bias * lr_multiplier if bias else None
        return plain_bias_act(x @ w.t(), b, activation, gain)

    compare(layer, plain, [torch.randn(4, 6)])


@pytest.mark.parametrize("down, bias, activation, gain", [
    (1, True, "lrelu", 1.0), (2, True, "lrelu", math.sqrt(0.5)), (2, False, "linear", math.sqrt(0.5)),
    (1, False, "lrelu", 1.0),
])
def test_conv2d_layer_matches_its_formula(down, bias, activation, gain):
    layer = randomise(Conv2dLayer(3, 4, 3 if bias else 1, bias=bias, activation=activation, down=down))
    act_gain = math.sqrt(2) if activation == "lrelu" else 1.0

    def plain(x):
        w = layer.weight / math.sqrt(layer.weight[0].numel())
        if down == 2:
            y = ops.conv2d_down2(x, w, layer.resample_filter)
        else:
            y = F.conv2d(x, w, padding=w.shape[-1] // 2)
        return plain_bias_act(y, layer.bias, activation, act_gain * gain)

    compare(lambda x: layer(x, gain=gain), plain, [torch.randn(2, 3, 8, 8)])


@pytest.mark.parametrize("up, noise_mode", [(1, "const"), (2, "const"), (1, "none"), (2, "random")])
def test_synthesis_layer_matches_the_plain_sequence(up, noise_mode):
    res = 8
    layer = randomise(SynthesisLayer(4, 5, w_dim=6, resolution=res, up=up))
    w = torch.randn(2, 6)
    x = torch.randn(2, 4, res // up, res // up)

    def plain(x, w):
        y = ops.modulated_conv2d(x, layer.weight, layer.affine(w), up=up == 2, f=layer.resample_filter)
        if noise_mode == "const":
            y = y + layer.noise_const * layer.noise_strength
        elif noise_mode == "random":
            y = y + torch.randn([2, 1, res, res]) * layer.noise_strength
        return plain_bias_act(y, layer.bias, "lrelu", math.sqrt(2) * 0.7)

    def fast(x, w):
        return layer(x, w, noise_mode=noise_mode, gain=0.7)

    torch.manual_seed(3)
    out_fast = fast(x, w)
    torch.manual_seed(3)
    out_plain = plain(x, w)
    assert_close(out_fast, out_plain)
    if noise_mode != "random":
        compare(fast, plain, [x, w])


def test_torgb_layer_matches_the_plain_sequence():
    layer = randomise(ToRGBLayer(4, 3, w_dim=6))
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 6)

    def plain(x, w):
        styles = layer.affine(w) / math.sqrt(4)
        return per_sample_weight_conv(x, layer.weight, styles, demodulate=False) + layer.bias[None, :, None, None]

    compare(layer, plain, [x, w])


def small_networks(seed=0):
    torch.manual_seed(seed)
    G = Generator(16, 0, 16, 16, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=32))
    D = Discriminator(0, 16, 3, channel_base=256, channel_max=32)
    return randomise(G, seed), randomise(D, seed + 1)


def outputs_and_grads(G, D, memory_format):
    G.synthesis.memory_format = memory_format
    D.memory_format = memory_format
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    img = G(z, None, noise_mode="const")
    logits = D(img, None)
    grads = torch.autograd.grad(logits.square().sum(), list(G.parameters()) + list(D.parameters()))
    return img, logits, grads


def test_channels_last_gives_the_same_networks():
    G, D = small_networks()
    ref = outputs_and_grads(G, D, torch.contiguous_format)
    nhwc = outputs_and_grads(G, D, torch.channels_last)
    assert_close(nhwc[0], ref[0], rtol=1e-4, atol=1e-4)
    assert_close(nhwc[1], ref[1], rtol=1e-4, atol=1e-4)
    for a, b in zip(nhwc[2], ref[2], strict=True):
        # A scalar parameter's gradient (noise strength) is one sum over every pixel of signed terms
        # that nearly cancel; another summation order moves it by a share of the terms' size, not of
        # the small result (0.8% of it on some CPUs).
        share = 1e-2 if b.ndim == 0 else 1e-3
        assert_close(a, b, rtol=share, atol=share * b.abs().max().item())


def test_bfloat16_blocks_on_cpu_stay_close_to_float32():
    G, D = small_networks()
    ref_img, ref_logits, _ = outputs_and_grads(G, D, torch.contiguous_format)
    G_bf, D_bf = small_networks()
    G_bf.synthesis.num_fp16_res = D_bf.num_fp16_res = 2
    for block in [G_bf.synthesis.b8, G_bf.synthesis.b16, D_bf.b8, D_bf.b16]:
        block.use_fp16 = True
    G_bf.synthesis.reduced_dtype = D_bf.reduced_dtype = torch.bfloat16
    img, logits, grads = outputs_and_grads(G_bf, D_bf, torch.contiguous_format)
    assert img.dtype == torch.float32 and all(torch.isfinite(g).all() for g in grads)
    # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the signal's scale.
    assert (img - ref_img).abs().max() < 0.05 * ref_img.abs().max()
    assert (logits - ref_logits).abs().max() < 0.05 * ref_logits.abs().max() + 0.05
    assert (img - ref_img).abs().max() > 0  # the reduced precision really was used
