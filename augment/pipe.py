"""AugmentPipe: ADA's differentiable augmentation pipeline as a torch module."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import kornia.augmentation
import torch
from torch import Tensor

from augment import matrices, sampling
from augment.color import apply_color
from augment.geometric import blit, is_blit, resample
from augment.imgfilter import band_filter
from augment.wavelets import BAND_POWER, SYM2, band_filters

# The transforms in pipeline order, by group (one preset letter per group).
GROUPS = MappingProxyType({
    "blit": ("xflip", "rotate90", "xint"),
    "geom": ("scale", "rotate", "aniso", "xfrac"),
    "color": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
    "filter": ("imgfilter",),
    "noise": ("noise",),
    "cutout": ("cutout",),
})
TRANSFORMS = tuple(name for names in GROUPS.values() for name in names)
# Combined presets: the first letters of the groups, in pipeline order (the last c is cutout).
_COMBINED = {
    "bg": ("blit", "geom"),
    "bgc": ("blit", "geom", "color"),
    "bgcf": ("blit", "geom", "color", "filter"),
    "bgcfn": ("blit", "geom", "color", "filter", "noise"),
    "bgcfnc": ("blit", "geom", "color", "filter", "noise", "cutout"),
}


def _strengths(groups: tuple[str, ...]) -> MappingProxyType:
    return MappingProxyType({name: 1.0 for group in groups for name in GROUPS[group]})


# Preset name -> strength multiplier of each transform it enables.
PRESETS = MappingProxyType({
    **{group: _strengths((group,)) for group in GROUPS},
    **{name: _strengths(groups) for name, groups in _COMBINED.items()},
})

_GEOMETRIC = GROUPS["blit"] + GROUPS["geom"]


@dataclass
class AugmentParams:
    """One draw of the pipeline's random parameters for a batch; `AugmentPipe.apply` is then deterministic.

    Every field is per image (first dimension N). A group that is off in the pipe is None.
    draws: each enabled transform's own parameter, identity where not applied: xflip 0/1,
        rotate90 k, xint and xfrac shifts in pixels [N, 2], scale, aniso, contrast and
        saturation factors, rotate_pre, rotate_post and hue angles in radians, brightness
        offset, lumaflip 0/1, imgfilter band gains [N, 4], noise std, cutout 0/1.
    geom: [N, 3, 3] output pixel -> input position, pixels from the image centre.
    color: [N, 4, 4] acting on (r, g, b, 1).
    band_gains: [N, 4] gains of the image filter's bands, lowest first.
    noise_std: [N] std of each image's additive noise (0: none); noise: [N, C, H, W] unit normal noise.
    cutout_centres: [N, 2] (x, y) in units of the image size; cutout: bool [N], which images get one.
    extra: per extra kornia stage, which images it transforms (bool [N]) and its kornia parameters
        drawn for those images.
    """

    draws: dict[str, Tensor] = field(default_factory=dict)
    geom: Tensor | None = None
    color: Tensor | None = None
    band_gains: Tensor | None = None
    noise_std: Tensor | None = None
    noise: Tensor | None = None
    cutout_centres: Tensor | None = None
    cutout: Tensor | None = None
    extra: list[tuple[Tensor, dict[str, Tensor]]] = field(default_factory=list)


def _changed(m: Tensor) -> Tensor:
    """Which per-image matrices differ from the identity, bool [N]."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return (m != eye).flatten(1).any(dim=1)


def _on_subset(images: Tensor, mask: Tensor, fn, *params: Tensor) -> Tensor:
    """fn(images[mask], *params[mask]) written back into images; untouched images are kept as they are."""
    index = mask.nonzero().squeeze(1)
    if index.numel() == 0:
        return images
    if index.numel() == images.shape[0]:
        return fn(images, *params)
    out = fn(images.index_select(0, index), *(p.index_select(0, index) for p in params))
    return images.index_copy(0, index, out)


def warp(images: Tensor, g_inv: Tensor) -> Tensor:
    """Each image by its own geometric map [N, 3, 3]: untouched where the map is the identity, copied
    pixel for pixel where it moves whole pixels, resampled once elsewhere."""
    changed = _changed(g_inv)
    whole_pixels = is_blit(g_inv, *images.shape[2:])
    images = _on_subset(images, changed & whole_pixels, blit, g_inv)
    return _on_subset(images, changed & ~whole_pixels, resample, g_inv)


class AugmentPipe(torch.nn.Module):
    """The ADA augmentation pipeline: a random, differentiable map of image batches to image batches.

    Each transform is applied to each image independently with probability p * its strength
    multiplier, in the order blit (xflip, rotate90, xint), geom (scale, rotate, aniso, xfrac),
    color (brightness, contrast, lumaflip, hue, saturation), filter (imgfilter), noise, cutout.
    The geometric transforms compose into one map per image, resampled once with reflection
    padding and wavelet anti-aliasing (a map that only moves whole pixels, such as a flip alone,
    is applied as an exact pixel copy); the colour transforms compose into one colour matrix.
    Images that draw no transform of a group pass it unchanged, bit for bit, so p = 0 is the
    identity.

    Args:
        preset: one of PRESETS (default "bgc"), or None for all strengths 0.
        p: the augmentation probability, in [0, 1]: a number, or a function that returns the
            current one (a training loop passes its controller's, which owns p; the pipe reads it
            at every draw and keeps no copy). Set a number any time with `pipe.p = value`. Values
            a function returns above 1 act as 1; keeping them in [0, 1] is the caller's job.
        xflip ... cutout: strength multiplier of each transform (>= 0); None keeps the preset's.
        The laws (defaults are ADA's): xint_max, integer shift uniform within +-xint_max of the
        size; scale_std, aniso_std, contrast_std, saturation_std, imgfilter_std, log2 standard
        deviations of lognormal factors; rotate_max, hue_max, angle ranges as a fraction of half
        a turn (1 = +-180 degrees); xfrac_std, shift std in units of the size; brightness_std,
        additive offset std; imgfilter_bands, per-band strength multipliers; noise_std, std of
        the half-normal noise strength; cutout_size, side of the cut square relative to the image.

    extra: kornia augmentations (`kornia.augmentation.AugmentationBase2D`, e.g. RandomPerspective(0.3))
        that follow the pipeline as extra stages, in order. Each is applied to each image
        independently with probability p, like the pipeline's own transforms: its own p and p_batch
        are set to 1, as the pipe decides which images it transforms. Its parameters are drawn by
        kornia, from torch's global generator (`generator` does not reach them). It must keep the
        image size. Beware of leaks: ADA's own transforms are safe up to p ~ 0.8 because each,
        applied with probability p, is invertible as a distribution (G gains nothing by making
        augmented-looking images). Any stage applied with probability p < 0.5 is invertible in
        that sense; above, it depends on the stage. One that does the same to every image it gets
        (a flip, here with its own p set to 1) makes flipped and plain images equally likely at
        p = 0.5 and leaks there; watch the samples when p climbs.

    Input: float images [N, C, H, W], nominally in [-1, 1], H and W >= 8. Colour transforms need
    C = 1 or 3; with one channel the image is grey, on which hue and saturation are the identity,
    so they are skipped (see `augment.color.apply_color`). Other transforms take any C.

    Randomness comes from `generator` when given (on the images' device), else from torch's
    global generator, so torch.manual_seed makes a run reproducible. Deciding which images to
    transform reads a few values back to the host (a synchronisation per call on a GPU).
    """

    def __init__(
        self,
        preset: str | None = "bgc",
        *,
        p: float | Callable[[], float] = 0.0,
        xflip: float | None = None, rotate90: float | None = None, xint: float | None = None,
        scale: float | None = None, rotate: float | None = None, aniso: float | None = None,
        xfrac: float | None = None, brightness: float | None = None, contrast: float | None = None,
        lumaflip: float | None = None, hue: float | None = None, saturation: float | None = None,
        imgfilter: float | None = None, noise: float | None = None, cutout: float | None = None,
        xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1.0, aniso_std: float = 0.2,
        xfrac_std: float = 0.125, brightness_std: float = 0.2, contrast_std: float = 0.5,
        hue_max: float = 1.0, saturation_std: float = 1.0,
        imgfilter_bands: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0), imgfilter_std: float = 1.0,
        noise_std: float = 0.1, cutout_size: float = 0.5,
        extra: Sequence[kornia.augmentation.AugmentationBase2D] = (),
    ) -> None:
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")
        overrides = dict(xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
                         xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
                         saturation=saturation, imgfilter=imgfilter, noise=noise, cutout=cutout)
        base = PRESETS[preset] if preset is not None else {}
        strengths = {}
        for name in TRANSFORMS:
            value = overrides[name] if overrides[name] is not None else base.get(name, 0.0)
            strengths[name] = _checked(name, value, allow_zero=True)
        self.strengths = MappingProxyType(strengths)
        laws = dict(xint_max=xint_max, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std,
                    xfrac_std=xfrac_std, brightness_std=brightness_std, contrast_std=contrast_std, hue_max=hue_max,
                    saturation_std=saturation_std, imgfilter_std=imgfilter_std, noise_std=noise_std,
                    cutout_size=cutout_size)
        for name, value in laws.items():
            setattr(self, name, _checked(name, value))
        if len(imgfilter_bands) != len(BAND_POWER):
            raise ValueError(f"imgfilter_bands needs {len(BAND_POWER)} values, got {len(imgfilter_bands)}")
        self.imgfilter_bands = tuple(_checked("imgfilter_bands", b, allow_zero=True) for b in imgfilter_bands)

        self.p = p
        self.register_buffer("band_filters", torch.from_numpy(band_filters(SYM2)), persistent=False)
        self.extra = torch.nn.ModuleList(_extra_stage(stage) for stage in extra)

    @property
    def p(self) -> float:
        return self._p() if callable(self._p) else self._p

    @p.setter
    def p(self, value: float | Callable[[], float]) -> None:
        if not callable(value):
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation probability p must be in [0, 1], got {value}")
        self._p = value

    @property
    def device(self) -> torch.device:
        return self.band_filters.device

    def extra_repr(self) -> str:
        on = ", ".join(f"{k}={v:g}" for k, v in self.strengths.items() if v > 0)
        return f"p={float(self.p):.4f}, {on or 'all transforms off'}"

    def _uses(self, names: tuple[str, ...]) -> bool:
        return any(self.strengths[name] > 0 for name in names)

    def sample(self, n: int, channels: int, height: int, width: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> AugmentParams:
        """Draws the random parameters for a batch of n images of shape [channels, height, width]."""
        device = torch.device(device) if device is not None else self.device
        s = self.strengths
        # float32, as the probabilities are compared with float32 uniform draws.
        p = torch.tensor(self.p, dtype=torch.float32, device=device)
        prob = {name: p * s[name] for name in TRANSFORMS}
        rng = sampling.Rng(generator, device)
        draws: dict[str, Tensor] = {}
        params = AugmentParams(draws=draws)

        if self._uses(_GEOMETRIC):
            size = torch.tensor([width, height], dtype=torch.float32, device=device)
            g = torch.eye(3, device=device).repeat(n, 1, 1)
            if s["xflip"] > 0:
                flip = draws["xflip"] = sampling.coin(n, prob["xflip"], rng)
                g = matrices.compose(g, matrices.scale2d(1 - 2 * flip, torch.ones_like(flip)))
            if s["rotate90"] > 0:
                k = draws["rotate90"] = sampling.quarter_turns(n, prob["rotate90"], rng)
                g = matrices.compose(g, matrices.quarter_turns(k, g))
            if s["xint"] > 0:
                shift = sampling.uniform((n, 2), prob["xint"], self.xint_max, rng)
                shift = draws["xint"] = torch.round(shift * size)
                g = matrices.compose(g, matrices.translate2d(-shift))
            if s["scale"] > 0:
                factor = draws["scale"] = sampling.lognormal2(n, prob["scale"], self.scale_std, rng)
                g = matrices.compose(g, matrices.scale2d(1 / factor, 1 / factor))
            # Rotating both before and after the anisotropic scaling also turns its axes at random.
            rotation_prob = sampling.rotation_prob(prob["rotate"])
            max_angle = math.pi * self.rotate_max
            if s["rotate"] > 0:
                theta = draws["rotate_pre"] = sampling.uniform((n,), rotation_prob, max_angle, rng)
                g = matrices.compose(g, matrices.rotate2d(torch.cos(theta), torch.sin(theta)))
            if s["aniso"] > 0:
                factor = draws["aniso"] = sampling.lognormal2(n, prob["aniso"], self.aniso_std, rng)
                g = matrices.compose(g, matrices.scale2d(1 / factor, factor))
            if s["rotate"] > 0:
                theta = draws["rotate_post"] = sampling.uniform((n,), rotation_prob, max_angle, rng)
                g = matrices.compose(g, matrices.rotate2d(torch.cos(theta), torch.sin(theta)))
            if s["xfrac"] > 0:
                shift = draws["xfrac"] = sampling.normal((n, 2), prob["xfrac"], self.xfrac_std, rng) * size
                g = matrices.compose(g, matrices.translate2d(-shift))
            params.geom = g

        if self._uses(GROUPS["color"]):
            if channels not in (1, 3):
                raise ValueError(f"colour transforms need 1 or 3 channels, got {channels}: "
                                 "use a preset without 'c' or set the colour strengths to 0")
            c = torch.eye(4, device=device).repeat(n, 1, 1)
            if s["brightness"] > 0:
                offset = sampling.normal((n,), prob["brightness"], self.brightness_std, rng)
                c = matrices.compose(matrices.brightness3d(offset), c)
                draws["brightness"] = offset
            if s["contrast"] > 0:
                factor = draws["contrast"] = sampling.lognormal2(n, prob["contrast"], self.contrast_std, rng)
                c = matrices.compose(matrices.contrast3d(factor), c)
            if s["lumaflip"] > 0:
                flip = draws["lumaflip"] = sampling.coin(n, prob["lumaflip"], rng)
                c = matrices.compose(matrices.lumaflip3d(flip), c)
            if s["hue"] > 0 and channels == 3:
                theta = draws["hue"] = sampling.uniform((n,), prob["hue"], math.pi * self.hue_max, rng)
                c = matrices.compose(matrices.hue3d(theta), c)
            if s["saturation"] > 0 and channels == 3:
                factor = sampling.lognormal2(n, prob["saturation"], self.saturation_std, rng)
                c = matrices.compose(matrices.saturation3d(factor), c)
                draws["saturation"] = factor
            params.color = c

        if s["imgfilter"] > 0:
            params.band_gains = draws["imgfilter"] = sampling.band_gains(
                n, prob["imgfilter"], self.imgfilter_bands, self.imgfilter_std, BAND_POWER, rng)

        if s["noise"] > 0:
            params.noise_std = draws["noise"] = sampling.half_normal(n, prob["noise"], self.noise_std, rng)
            params.noise = rng.randn(n, channels, height, width)

        if s["cutout"] > 0:
            params.cutout = sampling.applied(n, prob["cutout"], rng)
            draws["cutout"] = params.cutout.float()
            params.cutout_centres = sampling.cutout_centres(n, rng)

        for stage in self.extra:
            chosen = sampling.applied(n, p, rng)
            count = int(chosen.sum())
            # Some kornia augmentations cannot draw for an empty batch; nothing is drawn for none.
            drawn = stage.forward_parameters(torch.Size([count, channels, height, width])) if count else {}
            params.extra.append((chosen, drawn))
        return params

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Applies drawn parameters to images; differentiable with respect to images."""
        if params.geom is not None:
            images = warp(images, params.geom)
        if params.color is not None:
            changed = _changed(params.color)
            if bool(changed.any()):
                images = torch.where(changed.view(-1, 1, 1, 1), apply_color(images, params.color), images)
        if params.band_gains is not None:
            filtered = (params.band_gains != 1).any(dim=1)
            bank = self.band_filters
            images = _on_subset(images, filtered, lambda x, g: band_filter(x, g, bank), params.band_gains)
        if params.noise_std is not None:
            std = params.noise_std.to(images.dtype).view(-1, 1, 1, 1)
            if bool((std != 0).any()):
                images = torch.where(std != 0, images + params.noise.to(images.dtype) * std, images)
        if params.cutout is not None and bool(params.cutout.any()):
            images = torch.where(self._cutout_mask(params, *images.shape[2:]), 0.0, images)
        for stage, (chosen, stage_params) in zip(self.extra, params.extra, strict=True):
            images = _on_subset(images, chosen, lambda x, st=stage, sp=stage_params: _run_stage(st, x, sp))
        return images

    def _cutout_mask(self, params: AugmentParams, height: int, width: int) -> Tensor:
        """True on the pixels that cutout sets to 0, [N, 1, H, W]."""
        device = params.cutout_centres.device
        x = (torch.arange(width, device=device) + 0.5) / width
        y = (torch.arange(height, device=device) + 0.5) / height
        half = self.cutout_size / 2
        inside_x = (x[None, :] - params.cutout_centres[:, :1]).abs() < half
        inside_y = (y[None, :] - params.cutout_centres[:, 1:]).abs() < half
        inside = inside_y[:, :, None] & inside_x[:, None, :] & params.cutout.view(-1, 1, 1)
        return inside[:, None]

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augments a batch [N, C, H, W]; returns a tensor of the same shape, dtype and device."""
        _check_images(images)
        if generator is not None and generator.device.type != images.device.type:
            raise ValueError(f"the generator is on {generator.device} but the images are on {images.device}: "
                             "create the generator on the images' device")
        n, c, height, width = images.shape
        params = self.sample(n, c, height, width, device=images.device, generator=generator)
        return self.apply(images, params)


def _extra_stage(stage: kornia.augmentation.AugmentationBase2D) -> kornia.augmentation.AugmentationBase2D:
    if not isinstance(stage, kornia.augmentation.AugmentationBase2D):
        raise ValueError(f"extra stages are kornia augmentations (kornia.augmentation.AugmentationBase2D), "
                         f"got {type(stage).__name__}")
    # The pipe draws which images a stage transforms, with the pipe's p: the stage transforms every one it gets.
    stage.p, stage.p_batch = 1.0, 1.0
    return stage


def _run_stage(stage: kornia.augmentation.AugmentationBase2D, images: Tensor, params: dict[str, Tensor]) -> Tensor:
    out = stage(images, params=params)
    if out.shape != images.shape:
        raise ValueError(f"extra stage {type(stage).__name__} changed the images from {tuple(images.shape)} to "
                         f"{tuple(out.shape)}; extra stages must keep the size")
    return out


def _checked(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"augmentation setting {name} must be a finite number {bound}, got {value}")
    return value


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"AugmentPipe expects images of shape [N, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"AugmentPipe expects floating-point images, got {images.dtype}: convert to float")
    if min(images.shape[2:]) < 8:
        height, width = images.shape[2:]
        raise ValueError(f"AugmentPipe supports images of at least 8x8 pixels, got {height}x{width}")
