"""ADA's differentiable augmentation pipeline (usable on its own: it imports nothing from `ada`).

    from augment import AugmentPipe, PRESETS
    pipe = AugmentPipe("bgc", p=0.2)
    augmented = pipe(images)          # images: float [N, C, H, W] in [-1, 1]

    AugmentPipe("bgc", extra=[kornia.augmentation.RandomPerspective(0.3)])  # more stages, following p
    kornia.augmentation.AugmentationSequential(KorniaAugmentPipe(pipe), ...)  # the pipe inside kornia

    DiffAugment("color,translation,cutout")(images)  # DiffAugment's fixed policies, every image (augment.diffaug)
"""

from augment.diffaug import DiffAugment
from augment.kornia_interop import KorniaAugmentPipe
from augment.pipe import GROUPS, PRESETS, TRANSFORMS, AugmentParams, AugmentPipe

__all__ = ["GROUPS", "DiffAugment", "PRESETS", "TRANSFORMS", "AugmentParams", "AugmentPipe", "KorniaAugmentPipe"]
