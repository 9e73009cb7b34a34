"""Built-in datasets: real images that ship inside installed packages, so a first run needs no
download.

`lfw-faces` is the 100 face crops of Labeled Faces in the Wild that scikit-image bundles
(`skimage.data.lfw_subset()`, whose first 100 entries are faces; the rest are not),
25x25 grayscale, resized here to 32x32 (`lfw-faces`) or 16x16 (`lfw-faces16`).

`digits` is scikit-learn's handwritten digits (`sklearn.datasets.load_digits()`): 1797 scans of
8x8 pixels in 17 grey levels, ten classes of about 180 each, resized here to 16x16 (`digits`) or
32x32 (`digits32`). The labels are real, so `--cond=1` works and the quality benchmark can count
which classes a generator covers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ada.data import ImageDataset
from ada.errors import UserError

_RESOLUTIONS = {"lfw-faces": 32, "lfw-faces16": 16, "digits": 16, "digits32": 32}
NAMES = tuple(_RESOLUTIONS)
_NUM_FACES = 100
NUM_DIGIT_CLASSES = 10


def is_builtin(spec: str) -> bool:
    return spec in NAMES


def _resized(images: np.ndarray, resolution: int) -> np.ndarray:
    """Float images in [0, 1] [N, H, W] -> uint8 [N, 1, R, R], Lanczos-resampled."""
    out = np.empty([len(images), 1, resolution, resolution], dtype=np.uint8)
    for i, image in enumerate(images):
        img = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
        out[i, 0] = np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))
    return out


def lfw_faces(resolution: int) -> np.ndarray:
    """The 100 LFW face crops as uint8 [100, 1, R, R]."""
    from skimage.data import lfw_subset

    return _resized(lfw_subset()[:_NUM_FACES], resolution)


def digits(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digit scans as uint8 [N, 1, R, R] and their classes int64 [N]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return _resized(data.images / 16.0, resolution), data.target.astype(np.int64)


def open_builtin(name: str, cond: bool = False, mirror: bool = False) -> ImageDataset:
    resolution = _RESOLUTIONS[name]
    labels = None
    if name.startswith("digits"):
        images, labels = digits(resolution)
    else:
        if cond:
            raise UserError(f"--cond: the built-in dataset {name} has no labels; the built-in digits have")
        images = lfw_faces(resolution)
    names = [f"{name}/{i:05d}" for i in range(len(images))]
    c_dim = NUM_DIGIT_CLASSES if cond else 0
    return ImageDataset(None, names, False, resolution, labels, c_dim, mirror, name, images)
