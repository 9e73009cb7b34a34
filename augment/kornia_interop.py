"""AugmentPipe as a kornia augmentation, to stand inside kornia.augmentation.AugmentationSequential and
ImageSequential next to kornia's own.

    import kornia.augmentation as K
    from augment import AugmentPipe, KorniaAugmentPipe

    pipe = AugmentPipe("bgc", p=0.6)
    aug = K.AugmentationSequential(KorniaAugmentPipe(pipe), K.RandomGaussianNoise(std=0.1), data_keys=["input", "mask"])
    images, masks = aug(images, masks)
    again = aug(other_images, other_masks, params=aug._params)      # the same draw, replayed
    back = aug.inverse(images, masks)                                # the geometry undone

Following kornia's conventions:

- `forward` draws the parameters (all of the pipe's randomness: which transforms, their values, the
  noise) into a dict of per-image tensors, which `params=` replays exactly.
- `transform_matrix` is the geometric part as kornia defines it, [N, 3, 3] from input to output
  pixel coordinates (origin at the top-left pixel centre); masks get the same geometry with
  nearest-neighbour sampling, boxes and keypoints the matrix.
- `inverse` undoes the geometry (exactly for flips, quarter turns and integer shifts away from the
  border, up to resampling otherwise) and, like kornia's intensity augmentations, leaves colour,
  filtering, noise and cutout applied.

The augmentation probability stays the pipe's one `p` buffer, read at each draw: kornia's own
per-image gate of this wrapper is fixed at 1.
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation
import torch
from torch import Tensor

from augment.geometric import blit
from augment.pipe import AugmentParams, AugmentPipe, warp

_FIELDS = ("geom", "color", "band_gains", "noise_std", "noise", "cutout_centres", "cutout")
_DRAW = "draw."


def params_to_dict(params: AugmentParams) -> dict[str, Tensor]:
    """A flat dict of tensors, as kornia's containers store and replay parameters."""
    flat = {name: getattr(params, name) for name in _FIELDS if getattr(params, name) is not None}
    flat.update({_DRAW + name: value for name, value in params.draws.items()})
    return flat


def params_from_dict(flat: dict[str, Any]) -> AugmentParams:
    """The inverse of params_to_dict; the keys kornia adds (batch_prob, forward_input_shape) are ignored."""
    draws = {key[len(_DRAW):]: value for key, value in flat.items() if key.startswith(_DRAW)}
    return AugmentParams(draws=draws, **{name: flat[name] for name in _FIELDS if name in flat})


def centred_from_pixel(height: int, width: int, like: Tensor) -> Tensor:
    """[3, 3]: kornia's pixel coordinates (origin at the top-left pixel centre) -> ours (from the image centre)."""
    return torch.tensor([[1, 0, -(width - 1) / 2], [0, 1, -(height - 1) / 2], [0, 0, 1]],
                        dtype=like.dtype, device=like.device)


def pixel_matrix(g_inv: Tensor, height: int, width: int) -> Tensor:
    """Our output-to-input map in centred coordinates -> kornia's input-to-output map in pixel coordinates."""
    c = centred_from_pixel(height, width, g_inv)
    return torch.linalg.inv(c) @ torch.linalg.inv(g_inv) @ c


def centred_map(matrix: Tensor, height: int, width: int) -> Tensor:
    """A pixel-coordinate map -> the same map in our centred coordinates."""
    c = centred_from_pixel(height, width, matrix)
    return c @ matrix @ torch.linalg.inv(c)


class KorniaAugmentPipe(kornia.augmentation.GeometricAugmentationBase2D):
    """An AugmentPipe (without extra stages) as a kornia geometric augmentation; see the module docstring."""

    def __init__(self, pipe: AugmentPipe) -> None:
        super().__init__(p=1.0, same_on_batch=False, keepdim=False)
        if len(pipe.extra):
            raise ValueError("inside a kornia container, put the kornia augmentations in the container itself: "
                             "KorniaAugmentPipe takes an AugmentPipe without extra stages")
        self.pipe = pipe

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        n, channels, height, width = batch_shape
        return params_to_dict(self.pipe.sample(n, channels, height, width, device=self.pipe.device))

    def compute_transformation(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]) -> Tensor:
        if "geom" not in params:
            return self.identity_matrix(input).expand(input.shape[0], 3, 3)
        return pixel_matrix(params["geom"].to(input.dtype), *input.shape[2:])

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        return self.pipe.apply(input, params_from_dict(params))

    def apply_transform_mask(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                             transform: Tensor | None = None) -> Tensor:
        # Labels move with the geometry, nearest neighbour, reflected outside as the image is; no colour.
        if "geom" not in params:
            return input
        return blit(input, params["geom"])

    def inverse_transform(self, input: Tensor, flags: dict[str, Any], transform: Tensor | None = None,
                          size: tuple[int, int] | None = None) -> Tensor:
        # `transform` is the inverse of the forward matrix: output -> input pixel coordinates. Undoing the
        # warp reads the augmented image where the forward map sent each original pixel.
        forward = torch.linalg.inv(transform.to(input.dtype))
        return warp(input, centred_map(forward, *input.shape[2:]))
