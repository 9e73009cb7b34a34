"""ADA's differentiable augmentation pipeline (usable on its own: it imports nothing from `ada`).

    from augment import AugmentPipe, PRESETS
    pipe = AugmentPipe("bgc", p=0.2)
    augmented = pipe(images)          # images: float [N, C, H, W] in [-1, 1]
"""

from augment.pipe import GROUPS, PRESETS, TRANSFORMS, AugmentParams, AugmentPipe

__all__ = ["GROUPS", "PRESETS", "TRANSFORMS", "AugmentParams", "AugmentPipe"]
