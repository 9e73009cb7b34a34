"""Built-in datasets: real photographs that ship inside an installed package, so a first run
needs no download.

`lfw-faces` is the 100 face crops of Labeled Faces in the Wild that scikit-image bundles
(`skimage.data.lfw_subset()`, whose first 100 entries are faces; the rest are not),
25x25 grayscale, resized here to 32x32 (`lfw-faces`) or 16x16 (`lfw-faces16`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ada.data import ImageDataset

NAMES = ("lfw-faces", "lfw-faces16")
_RESOLUTIONS = {"lfw-faces": 32, "lfw-faces16": 16}
_NUM_FACES = 100


def is_builtin(spec: str) -> bool:
    return spec in NAMES


def lfw_faces(resolution: int) -> np.ndarray:
    """The 100 LFW face crops as uint8 [100, 1, R, R]."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[:_NUM_FACES]
    out = np.empty([len(faces), 1, resolution, resolution], dtype=np.uint8)
    for i, face in enumerate(faces):
        img = Image.fromarray(np.round(face * 255).astype(np.uint8), mode="L")
        out[i, 0] = np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))
    return out


def open_builtin(name: str, cond: bool = False, mirror: bool = False) -> ImageDataset:
    from ada.errors import UserError

    if cond:
        raise UserError(f"--cond: the built-in dataset {name} has no labels")
    resolution = _RESOLUTIONS[name]
    images = lfw_faces(resolution)
    names = [f"{name}/{i:05d}" for i in range(len(images))]
    return ImageDataset(None, names, False, resolution, None, 0, mirror, name, images)
