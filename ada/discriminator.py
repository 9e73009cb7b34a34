"""StyleGAN2 discriminator: residual blocks from the image resolution down to 4x4, then a
minibatch-stddev epilogue (conditional by projection on a mapped label).

Module tree, parameter names and constructor arguments follow the official networks, as in
`ada.networks`, whose layers and precision rules it shares.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ada import networks, ops
from ada.networks import (
    FullyConnectedLayer,
    MappingNetwork,
    channels_per_resolution,
    check_resolution,
    fp16_resolution,
    register_resample_filter,
)


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate, optional 2x downsampling, bias and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        register_resample_filter(self, resample_filter)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ops.LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # The convolution is linear in w, so the equalised-lr gain is applied to its output in the
        # bias-and-activation pass; without a bias there is no such pass and the weight takes it.
        w = self.weight.to(x.dtype)
        scale, act_gain = self.weight_gain, self.act_gain * gain
        if self.bias is None and act_gain > 0:
            # The leaky ReLU is positively homogeneous, so its gain may go into the weight too.
            w = w * (scale * act_gain)
            scale = act_gain = 1.0
        if self.down == 2:
            x = ops.conv2d_down2(x, w, self.resample_filter)
        else:
            x = torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.scale_bias_act(x, scale, self.bias, self.activation, gain=act_gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
    """One resolution of D: (fromRGB), conv, downsampling conv, and the residual skip.

    Its convolution layers are numbered from `first_layer_idx` in the order the official code
    numbers them, which is what Freeze-D counts.
    """

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: list[int] | None = None,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"discriminator architecture {architecture!r} is not one of orig, skip, resnet")
        self.in_channels = in_channels
        self.resolution = resolution
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.first_layer_idx = first_layer_idx
        register_resample_filter(self, resample_filter)
        common = dict(resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.layers: list[str] = []
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
            self.layers.append("fromrgb")
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation=activation, down=2, **common)
        self.layers += ["conv0", "conv1"]
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, **common)
            self.layers.append("skip")
        self.num_layers = len(self.layers)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        reduced_dtype: torch.dtype | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = networks.block_dtype(self.use_fp16, reduced_dtype, img.device if x is None else x.device)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 end of D: minibatch stddev, conv, two dense layers, and the class projection."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.architecture = architecture
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_channels = mbstd_num_channels
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation=activation)
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None) -> torch.Tensor:
        if self.architecture == "skip":
            y = self.fromrgb(img.to(torch.float32))
            x = y if x is None else x.to(dtype=torch.float32, memory_format=torch.contiguous_format) + y
        else:
            x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.mbstd_num_channels > 0:
            x = ops.minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.conv(x)
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim > 0:
            # Projection discriminator: the logit is the agreement of D's output with the class embedding.
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """image, c -> one raw logit per image. Same constructor as the official Discriminator."""

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,
        block_kwargs: dict | None = None,
        mapping_kwargs: dict | None = None,
        epilogue_kwargs: dict | None = None,
    ):
        super().__init__()
        check_resolution(img_resolution)
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.init_kwargs = dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp, cmap_dim=cmap_dim, block_kwargs=dict(block_kwargs or {}),
            mapping_kwargs=dict(mapping_kwargs or {}), epilogue_kwargs=dict(epilogue_kwargs or {}),
        )
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        channels = channels_per_resolution(channel_base, channel_max, self.block_resolutions + [4])
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, channels[res], channels[res // 2], resolution=res, first_layer_idx=layer_idx,
                use_fp16=res >= fp16_res, **(block_kwargs or {}), **common,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        self.num_block_layers = layer_idx
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **(mapping_kwargs or {})
            )
        # A 4x4 D has no blocks, so its epilogue reads the image itself, through the skip architecture's fromrgb.
        epilogue_common = dict(common, architecture="skip") if img_resolution == 4 else common
        self.b4 = DiscriminatorEpilogue(
            channels[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}), **epilogue_common
        )
        self.reduced_dtype: torch.dtype | None = torch.float16
        self.memory_format = torch.contiguous_format

    def layer_modules(self) -> list[nn.Module]:
        """D's block convolutions from the highest resolution down: what Freeze-D's N counts."""
        return [
            getattr(block, name)
            for block in (getattr(self, f"b{res}") for res in self.block_resolutions)
            for name in block.layers
        ]

    def forward(self, img: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, reduced_dtype=self.reduced_dtype, memory_format=self.memory_format)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
