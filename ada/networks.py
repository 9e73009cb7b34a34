"""StyleGAN2 generator, and the layers it shares with the discriminator (`ada.discriminator`).

The module tree, parameter names, shapes and constructor arguments follow the official
stylegan2-ada-pytorch networks, so that its network pickles import by name (see
`ada.official`). The arithmetic is ours: modulated convolutions scale activations rather
than building per-sample weights (`ops.modulated_conv2d`), and resampling uses the fast
FIR paths of `ada.ops`.

Mixed precision: blocks of the highest `num_fp16_res` resolutions compute in
`reduced_dtype` (float16 on CUDA unless the trainer says otherwise) with activations
clamped to +-conv_clamp; on a CPU, float16 is not used and those blocks stay in float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ada import ops
from ada.checks import is_supported_resolution

RESAMPLE_TAPS = [1, 3, 3, 1]


def block_dtype(use_reduced: bool, reduced_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype a block computes in: reduced precision only where it is requested and fast."""
    if not use_reduced or reduced_dtype is None:
        return torch.float32
    if reduced_dtype == torch.float16 and device.type != "cuda":
        return torch.float32
    return reduced_dtype


def register_resample_filter(module: nn.Module, taps: list[int] | None) -> None:
    # Not persistent: it is a constant of the architecture, not a learned or tracked value.
    module.register_buffer("resample_filter", ops.setup_filter(taps or RESAMPLE_TAPS), persistent=False)


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate: weights stored at unit variance, scaled at run time."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        if activation not in ("linear", "lrelu"):  # forward would otherwise treat any other name as linear
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        act_gain = self._act_gain()
        if self.bias is None:
            return ops.scale_bias_act(x.matmul(w.t()), self.weight_gain, None, self.activation, gain=act_gain)
        # One addmm applies both gains (the leaky ReLU's folded in, see ops.scale_bias_act), so
        # neither the weight nor the bias is copied to be scaled.
        x = torch.addmm(
            self.bias.to(x.dtype), x, w.t(), beta=self.bias_gain * act_gain, alpha=self.weight_gain * act_gain
        )
        return torch.nn.functional.leaky_relu_(x, ops.LRELU_SLOPE) if self.activation == "lrelu" else x

    def _act_gain(self) -> float:
        return ops.LRELU_GAIN if self.activation == "lrelu" else 1.0


class MappingNetwork(nn.Module):
    """z (and the class embedding) -> w, with a running average of w for truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = True,
    ) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg and self.training and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling), noise input, bias and leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        register_resample_filter(self, resample_filter)
        self.act_gain = ops.LRELU_GAIN if activation == "lrelu" else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", gain: float = 1.0):
        styles = self.affine(w)
        x, dcoefs = ops.modulated_conv2d_parts(x, self.weight, styles, up=self.up == 2, f=self.resample_filter)
        noise = None
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            else:
                noise = self.noise_const
            noise = noise * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.demodulate_bias_act(x, dcoefs, noise, self.bias, self.activation, self.act_gain * gain, clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = ops.modulated_conv2d(x, self.weight, styles, demodulate=False)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (upsampling conv), conv, and its toRGB skip output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        **layer_kwargs: Any,
    ):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"synthesis architecture {architecture!r} is not supported; use 'skip'")
        self.in_channels = in_channels
        self.resolution = resolution
        self.use_fp16 = use_fp16
        register_resample_filter(self, resample_filter)
        self.num_conv = 0
        self.num_torgb = 0
        common = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, **layer_kwargs)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, resample_filter=resample_filter, **common)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        reduced_dtype: torch.dtype | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = block_dtype(self.use_fp16, reduced_dtype, ws.device)
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        y = self.torgb(x, next(w_iter)).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = y if img is None else ops.upsample2d(img, self.resample_filter) + y
        return x, img


def channels_per_resolution(channel_base: int, channel_max: int, resolutions: list[int]) -> dict[int, int]:
    """Feature maps per resolution: channel_base / res, capped at channel_max."""
    return {res: min(channel_base // res, channel_max) for res in resolutions}


def fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution that runs in reduced precision (the `num_fp16_res` highest do)."""
    return max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)


def check_resolution(img_resolution: int) -> None:
    if not is_supported_resolution(img_resolution):
        raise ValueError(f"resolution {img_resolution} is not a power of two in 4..1024")


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, img_channels, res, res] in about [-1, 1]."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        **block_kwargs: Any,
    ):
        super().__init__()
        check_resolution(img_resolution)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = channels_per_resolution(channel_base, channel_max, self.block_resolutions)
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_channels, channels[res], w_dim=w_dim, resolution=res, img_channels=img_channels,
                is_last=is_last, use_fp16=res >= fp16_res, **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        # Set by the trainer: the dtype of the reduced-precision blocks and the memory format.
        self.reduced_dtype: torch.dtype | None = torch.float16
        self.memory_format = torch.contiguous_format

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False) -> torch.Tensor:
        """`force_fp32` computes every block in float32, as the official argument of that name does
        (PPL needs it: float16 rounding swamps its 1e-4 steps)."""
        x = img = None
        w_idx = 0
        reduced_dtype = None if force_fp32 else self.reduced_dtype
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # A block's toRGB shares its w with the next block's first conv.
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb).to(torch.float32)
            w_idx += block.num_conv
            x, img = block(
                x, img, block_ws, noise_mode=noise_mode, reduced_dtype=reduced_dtype,
                memory_format=self.memory_format,
            )
        return img


class Generator(nn.Module):
    """z, c -> image. Same constructor and call signature as the official Generator."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict | None = None,
        synthesis_kwargs: dict | None = None,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.init_kwargs = dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=dict(mapping_kwargs or {}), synthesis_kwargs=dict(synthesis_kwargs or {}),
        )
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)
