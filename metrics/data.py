"""What metrics need from the real data and the generator, as small protocols.

``RealImages`` is the shape of the official dataset class: ``len(ds)``, ``ds[i] -> (image, label)``
with image uint8 [C, H, W] (numpy or torch, C = 1 or 3), plus a ``name`` that identifies the data
for the statistics cache (include anything that changes the pixels: path, resolution, mirroring).
Class labels for conditional generators come from a ``labels`` array [N, c_dim] or, as in the
official dataset, ``get_label(i)``.

``Generator`` is the StyleGAN2 G of the official code and of ``ada.networks``; PPL calls its
``synthesis(ws, noise_mode="const", force_fp32=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


class RealImages(Protocol):
    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class Generator(Protocol):
    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    img_resolution: int
    img_channels: int
    mapping: Callable[..., torch.Tensor]
    synthesis: Callable[..., torch.Tensor]

    def __call__(self, z: torch.Tensor, c: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class TensorImages:
    """A uint8 image tensor [N, C, H, W] (and optional labels [N, c_dim]) as :class:`RealImages`."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    name: str = "tensor-images"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"TensorImages wants uint8 images [N, C, H, W], got {self.images.dtype} "
                             f"{list(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = self.labels[index] if self.labels is not None else torch.zeros(0)
        return self.images[index], label


@dataclass
class MirroredImages:
    """``reals`` followed by their mirror images (index >= N is image index - N flipped left to right),
    as the official dataset lists x-flipped data; the legacy metrics compare against this."""

    reals: RealImages

    @property
    def name(self) -> str:
        return f"{self.reals.name}-xflip"

    def __len__(self) -> int:
        return 2 * len(self.reals)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        n = len(self.reals)
        item = self.reals[index % n]
        image, label = item if isinstance(item, (tuple, list)) else (item, None)
        image = image_of(image)
        return (image.flip(-1) if index >= n else image), label


def image_of(item: Any) -> torch.Tensor:
    """The image of a dataset item (``(image, label)`` or a bare image) as a uint8 tensor [C, H, W]."""
    image = item[0] if isinstance(item, (tuple, list)) else item
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"real images must be uint8 [C, H, W], got {image.dtype} {list(image.shape)}")
    return image


def all_labels(reals: RealImages) -> torch.Tensor | None:
    """Labels [N, c_dim] of the real data, or None when it has none."""
    labels = getattr(reals, "labels", None)
    if labels is None and hasattr(reals, "get_label"):
        labels = np.stack([np.asarray(reals.get_label(i)) for i in range(len(reals))])
    if labels is None:
        return None
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    return labels if labels.ndim == 2 and labels.shape[1] > 0 else None


LabelSampler = Callable[[int], torch.Tensor]


def label_sampler(
    generator: Generator, reals: RealImages | None, rng: torch.Generator,
) -> LabelSampler:
    """n -> labels [n, c_dim] for G: drawn uniformly from the real labels, as the official metrics do."""
    c_dim = generator.c_dim
    if c_dim == 0:
        return lambda n: torch.zeros([n, 0])
    labels = all_labels(reals) if reals is not None else None
    if labels is None or labels.shape[1] != c_dim:
        have = "none" if labels is None else f"{labels.shape[1]} columns"
        raise ValueError(f"the generator is conditional (c_dim={c_dim}) but the data's labels are {have}; "
                         "evaluate against the labelled dataset it was trained on")
    return lambda n: labels[torch.randint(labels.shape[0], (n,), generator=rng)]
