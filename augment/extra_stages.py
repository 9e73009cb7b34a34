"""Kornia augmentations by name, for `--aug-extra` on the command line: 'perspective:0.3,blur'.

Each name takes one optional strength after a colon (its default in brackets):

    perspective[:0.3]  kornia RandomPerspective(distortion_scale)
    erasing[:0.33]     RandomErasing(scale=(0.02, strength)), filled with 0
    blur[:1.0]         RandomGaussianBlur, 5x5, sigma uniform in (0.1, strength)
    sharpness[:0.5]    RandomSharpness(sharpness)

Each is applied to each image with probability p. Any stage is invertible as a distribution (does
not leak into G's images) while p < 0.5; above, it depends on the stage, and only ADA's own
transforms are known to stay safe to p ~ 0.8 (see AugmentPipe's `extra`). Erasing, which never
leaves an image as it was, is the one to watch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import kornia.augmentation as K

STAGES: dict[str, tuple[Callable[[float], K.AugmentationBase2D], float]] = {
    "perspective": (lambda s: K.RandomPerspective(distortion_scale=s), 0.3),
    "erasing": (lambda s: K.RandomErasing(scale=(0.02, s), value=0.0), 0.33),
    "blur": (lambda s: K.RandomGaussianBlur((5, 5), sigma=(0.1, s)), 1.0),
    "sharpness": (lambda s: K.RandomSharpness(sharpness=s), 0.5),
}


def parse_extra(text: str | None) -> list[K.AugmentationBase2D]:
    """'perspective:0.3,blur' -> the kornia augmentations, in order; ValueError naming a bad item."""
    stages = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"([a-z]+)(?::(\d*\.?\d+))?", item)
        if m is None:
            raise ValueError(f"extra stage {item!r} is not NAME or NAME:STRENGTH (e.g. perspective:0.3)")
        if m.group(1) not in STAGES:
            raise ValueError(f"unknown extra stage {m.group(1)!r}: choose from {', '.join(STAGES)}")
        make, default = STAGES[m.group(1)]
        stages.append(make(float(m.group(2)) if m.group(2) else default))
    return stages
