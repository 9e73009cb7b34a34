"""DiffAugment (augment/diffaug.py): each transform against hand computations, the paper's laws,
gradients with respect to the images, and the policy parser."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from augment import diffaug
from augment.diffaug import DiffAugment, parse_policy

f64 = torch.float64


def images(n=2, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=f64) * 2 - 1).requires_grad_()


# ----- the transforms, by hand -----


def test_colour_transforms_by_hand():
    # One pixel of two images, three channels.
    x = torch.tensor([[0.2, 0.4, 0.6], [-1.0, 0.0, 1.0]]).reshape(2, 3, 1, 1)
    out = diffaug.brightness(x, torch.tensor([0.25, -0.5]))
    assert torch.allclose(out.flatten(1), torch.tensor([[0.45, 0.65, 0.85], [-1.5, -0.5, 0.5]]))
    # Saturation scales each pixel's deviation from its channel mean (0.4 and 0.0 here).
    out = diffaug.saturation(x, torch.tensor([0.5, 2.0]))
    assert torch.allclose(out.flatten(1), torch.tensor([[0.3, 0.4, 0.5], [-2.0, 0.0, 2.0]]))
    # Contrast scales the deviation from the whole image's mean: (0.5 + 1.5 + 0 + 3.5) / 4 = 1.375.
    img = torch.tensor([0.5, 1.5, 0.0, 3.5]).reshape(1, 1, 2, 2)
    out = diffaug.contrast(img, torch.tensor([0.5]))
    assert torch.allclose(out.flatten(), 1.375 + 0.5 * (torch.tensor([0.5, 1.5, 0.0, 3.5]) - 1.375))


def test_saturation_leaves_grey_images_alone():
    x = images(c=1).detach()
    assert torch.equal(diffaug.saturation(x, torch.tensor([0.0, 1.7], dtype=f64)), x)


def test_translation_moves_whole_pixels_and_fills_zero():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = diffaug.translate(x, torch.tensor([[1, -2]]))  # one row down, two columns left
    expected = torch.tensor([[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0], [11, 12, 0, 0]], dtype=x.dtype)
    assert torch.equal(out[0, 0], expected)
    both = torch.cat([x, x * 10])
    out = diffaug.translate(both, torch.tensor([[0, 0], [-1, 1]]))  # each image its own shift
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1, 0], torch.tensor([[0, 50, 60, 70], [0, 90, 100, 110], [0, 130, 140, 150],
                                                [0, 0, 0, 0]], dtype=x.dtype))


def test_cutout_zeroes_a_square_clipped_at_the_border():
    x = torch.ones(2, 2, 4, 4)
    out = diffaug.cut_out(x, torch.tensor([[1, 1], [-1, 3]]), (2, 2))
    inner = torch.ones(4, 4)
    inner[1:3, 1:3] = 0
    corner = torch.ones(4, 4)
    corner[0, 3] = 0  # rows -1..0, columns 3..4: only (0, 3) lies inside
    assert torch.equal(out[0, 0], inner) and torch.equal(out[0, 1], inner)
    assert torch.equal(out[1, 0], corner)


# ----- the laws -----


def test_colour_laws_draw_the_paper_ranges_per_image():
    torch.manual_seed(0)
    n = 20000
    x = torch.zeros(n, 3, 1, 1)
    offsets = diffaug.random_brightness(x)[:, 0, 0, 0]
    assert -0.5 <= offsets.min() and offsets.max() < 0.5
    assert abs(offsets.mean()) < 0.01 and abs(offsets.var() - 1 / 12) < 0.005  # U[-0.5, 0.5)
    # Saturation and contrast factors, read off pixels whose mean is 0: x = [-1, 0, 1] per pixel.
    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(n, 3, 1, 1)
    factors = diffaug.random_saturation(x)[:, 2, 0, 0]
    assert 0 <= factors.min() and factors.max() < 2 and abs(factors.mean() - 1) < 0.02
    factors = diffaug.random_contrast(x)[:, 2, 0, 0]
    assert 0.5 <= factors.min() and factors.max() < 1.5 and abs(factors.mean() - 1) < 0.01


@pytest.mark.parametrize(("size", "reach"), [(16, 2), (32, 4), (8, 1), (12, 2)])
def test_shifts_are_uniform_within_an_eighth_of_the_size(size, reach):
    torch.manual_seed(0)
    shifts = diffaug.draw_shifts(20000, size, size, torch.device("cpu"))
    for axis in (0, 1):
        values, counts = shifts[:, axis].unique(return_counts=True)
        assert values.tolist() == list(range(-reach, reach + 1))
        assert counts.min() > 0.85 * counts.max()
    assert abs(torch.corrcoef(shifts.T.double())[0, 1]) < 0.03  # the axes are independent


@pytest.mark.parametrize(("size", "side", "corners"), [(16, 8, range(-4, 13)), (6, 3, range(-1, 5))])
def test_cutout_square_is_half_the_size_with_a_uniform_centre(size, side, corners):
    torch.manual_seed(0)
    drawn, (sh, sw) = diffaug.draw_cutout_corners(20000, size, size, torch.device("cpu"))
    assert sh == sw == side
    for axis in (0, 1):
        values, counts = drawn[:, axis].unique(return_counts=True)
        assert values.tolist() == list(corners)
        assert counts.min() > 0.85 * counts.max()
    out = DiffAugment("cutout")(torch.ones(500, 1, size, size))
    cut = (out == 0).flatten(1).sum(1)
    assert cut.max() == side * side and cut.min() >= ((side + 1) // 2) ** 2  # clipped at most to a quarter


def test_every_image_gets_its_own_draw_and_nothing_is_left_out():
    torch.manual_seed(0)
    x = images(n=64, c=3, h=16, w=16).detach()[:1].expand(64, 3, 16, 16)
    out = DiffAugment("color,translation,cutout")(x)
    assert out.shape == x.shape
    assert all(not torch.equal(o, x[0]) for o in out)  # no probability: every image is augmented
    assert len({o.sum().item() for o in out}) == 64  # and each differently


def test_a_seed_makes_it_reproducible_and_the_policy_order_is_kept():
    x = images(h=16, w=16).detach()
    torch.manual_seed(3)
    a = DiffAugment("translation,color")(x)
    torch.manual_seed(3)
    b = DiffAugment("translation,color")(x)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    by_hand = x
    for transform in (diffaug.random_translation, diffaug.random_brightness, diffaug.random_saturation,
                      diffaug.random_contrast):
        by_hand = transform(by_hand)
    assert torch.equal(a, by_hand)


# ----- gradients with respect to the images -----


@pytest.mark.parametrize("name", ["brightness", "saturation", "contrast"])
def test_colour_gradients(name):
    factor = torch.tensor([0.3, 1.7], dtype=f64)
    fn = getattr(diffaug, name)
    assert gradcheck(lambda x: fn(x, factor), (images(),))


def test_translation_and_cutout_gradients():
    shift = torch.tensor([[1, -2], [0, 3]])
    assert gradcheck(lambda x: diffaug.translate(x, shift), (images(),))
    corner = torch.tensor([[-2, 5], [3, 1]])
    assert gradcheck(lambda x: diffaug.cut_out(x, corner, (4, 4)), (images(),))


def test_whole_policy_gradient():
    def seeded(x):
        torch.manual_seed(7)
        return DiffAugment("color,translation,cutout")(x)

    assert gradcheck(seeded, (images(h=8, w=8),), fast_mode=True)


# ----- the policy -----


def test_policy_parsing():
    assert parse_policy("color,translation,cutout") == ("color", "translation", "cutout")
    assert parse_policy(" cutout , color") == ("cutout", "color")
    assert parse_policy(["translation"]) == ("translation",)
    for bad, message in (("", "empty"), ("color,flip", "unknown DiffAugment policy 'flip'"),
                         ("color,color", "'color' is given twice"), (",", "empty")):
        with pytest.raises(ValueError, match=message):
            parse_policy(bad)
    assert DiffAugment().policy == ("color", "translation", "cutout")
    assert DiffAugment().state_dict() == {}  # nothing to save: no p, no buffers
