"""Built-in datasets: the bundled digits with their labels, and the faces."""

import numpy as np
import pytest

from ada.builtin import NAMES, open_builtin
from ada.data import open_dataset
from ada.errors import UserError


def test_digits_are_labelled_16px_scans():
    ds = open_dataset("digits", cond=True)
    assert ds.resolution == 16 and ds.channels == 1 and ds.c_dim == 10
    assert len(ds) == 1797
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.min() >= 170 and counts.sum() == 1797
    img, label = ds[0]
    assert tuple(img.shape) == (1, 16, 16)
    assert tuple(label.shape) == (10,) and float(label.sum()) == 1
    # Ink on a dark background, using the whole range.
    assert ds.images.max() >= 250 and np.median(ds.images) < 64


def test_digits_unconditional_and_32px():
    assert open_dataset("digits").c_dim == 0
    assert open_builtin("digits32").resolution == 32


def test_faces_have_no_labels():
    with pytest.raises(UserError, match="no labels"):
        open_dataset("lfw-faces16", cond=True)


def test_every_builtin_opens():
    for name in NAMES:
        ds = open_builtin(name)
        assert len(ds) >= 100 and ds.images is not None
