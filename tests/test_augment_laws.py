"""Each transform's parameter law (DESIGN.md), checked from many samples.

Tolerances are about 5 standard errors of the estimate for the sample sizes used.
"""

import math

import pytest
import torch

from augment import AugmentPipe
from augment.sampling import keep_energy
from augment.wavelets import BAND_POWER

N = 20000
LN2 = math.log(2)


def sample(transform, p=1.0, n=N, c=3, h=32, w=32, seed=0, **kwargs):
    pipe = AugmentPipe(None, p=p, **{transform: 1.0}, **kwargs)
    return pipe.sample(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def fraction(mask):
    return mask.float().mean().item()


def images(n, c=3, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_each_transform_is_drawn_with_probability_p_times_strength_independently():
    pipe = AugmentPipe(None, p=0.3, scale=1.0, aniso=0.5, brightness=1.0)
    params = pipe.sample(N, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scaled, aniso = params.draws["scale"] != 1, params.draws["aniso"] != 1
    assert fraction(scaled) == pytest.approx(0.3, abs=0.02)
    assert fraction(aniso) == pytest.approx(0.15, abs=0.015)
    assert fraction(scaled & aniso) == pytest.approx(0.045, abs=0.01)
    assert fraction(params.draws["brightness"] != 0) == pytest.approx(0.3, abs=0.02)


def test_xflip_mirrors_half_the_images_it_is_applied_to():
    for p, expected in [(1.0, 0.5), (0.4, 0.2)]:
        params = sample("xflip", p=p)
        flip = params.draws["xflip"]
        assert set(flip.unique().tolist()) <= {0.0, 1.0}
        assert fraction(flip == 1) == pytest.approx(expected, abs=0.02)
        assert torch.equal(params.geom[:, 0, 0], 1 - 2 * flip)


def test_rotate90_k_is_uniform_over_quarter_turns():
    params = sample("rotate90")
    k = params.draws["rotate90"]
    counts = torch.bincount(k, minlength=4).float() / N
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.015)
    angle = torch.atan2(params.geom[:, 1, 0], params.geom[:, 0, 0])
    assert torch.allclose(torch.remainder(angle, 2 * math.pi), k * math.pi / 2, atol=1e-6)


def test_xint_is_an_integer_shift_uniform_within_an_eighth_of_the_size():
    params = sample("xint", h=16, w=32)
    shift = params.draws["xint"]
    assert torch.equal(shift, shift.round())
    # A uniform shift on [-m, m] rounded to whole pixels: interior values 1/(2m), the two ends half that.
    for axis, m in [(0, 4), (1, 2)]:
        counts = torch.bincount((shift[:, axis] + m).long(), minlength=2 * m + 1).float() / N
        expected = torch.full((2 * m + 1,), 1 / (2 * m))
        expected[0] = expected[-1] = 1 / (4 * m)
        assert torch.allclose(counts, expected, atol=0.015)
    assert torch.equal(params.geom[:, :2, 2], -shift)


@pytest.mark.parametrize("transform, log2_std", [("scale", 0.2), ("aniso", 0.2), ("contrast", 0.5),
                                                 ("saturation", 1.0)])
def test_lognormal_factors(transform, log2_std):
    log_factor = sample(transform).draws[transform].log()
    assert log_factor.mean().item() == pytest.approx(0.0, abs=5 * log2_std * LN2 / math.sqrt(N))
    assert log_factor.std().item() == pytest.approx(log2_std * LN2, rel=0.03)


def test_scale_and_aniso_matrices():
    s = sample("scale", n=100)
    assert torch.allclose(s.geom[:, 0, 0], 1 / s.draws["scale"])
    assert torch.equal(s.geom[:, 0, 0], s.geom[:, 1, 1])
    a = sample("aniso", n=100)
    assert torch.allclose(a.geom[:, 0, 0], 1 / a.draws["aniso"])
    assert torch.allclose(a.geom[:, 1, 1], a.draws["aniso"])


@pytest.mark.parametrize("transform, names", [("rotate", ("rotate_pre", "rotate_post")), ("hue", ("hue",))])
def test_angles_are_uniform_over_a_full_turn(transform, names):
    params = sample(transform)
    for name in names:
        theta = params.draws[name]
        assert (theta != 0).all() and theta.abs().max() <= math.pi
        counts = torch.histc(theta, bins=8, min=-math.pi, max=math.pi) / N
        assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.012)


def test_arbitrary_rotation_is_drawn_before_and_after_aniso_with_probability_one_minus_sqrt():
    params = sample("rotate", p=0.5)
    pre, post = params.draws["rotate_pre"] != 0, params.draws["rotate_post"] != 0
    q = 1 - math.sqrt(0.5)
    assert fraction(pre) == pytest.approx(q, abs=0.016)
    assert fraction(post) == pytest.approx(q, abs=0.016)
    assert fraction(pre & post) == pytest.approx(q * q, abs=0.01)
    assert fraction(pre | post) == pytest.approx(0.5, abs=0.018)


def test_xfrac_is_normal_with_an_eighth_of_the_size_as_std():
    shift = sample("xfrac", h=16, w=32).draws["xfrac"]
    assert shift.mean(dim=0).abs().max() < 5 * 4 / math.sqrt(N)
    assert shift[:, 0].std().item() == pytest.approx(0.125 * 32, rel=0.03)
    assert shift[:, 1].std().item() == pytest.approx(0.125 * 16, rel=0.03)


def test_brightness_is_an_offset_with_mean_0_and_std_0_2():
    params = sample("brightness")
    b = params.draws["brightness"]
    assert b.mean().item() == pytest.approx(0.0, abs=5 * 0.2 / math.sqrt(N))
    assert b.std().item() == pytest.approx(0.2, rel=0.03)
    assert torch.equal(params.color[:, :3, 3], b[:, None].expand(-1, 3))


def test_lumaflip_flips_half_the_images():
    flip = sample("lumaflip").draws["lumaflip"]
    assert fraction(flip == 1) == pytest.approx(0.5, abs=0.02)


def test_band_gains_amplify_each_band_by_a_lognormal_and_keep_energy():
    gains = sample("imgfilter").draws["imgfilter"]
    # Renormalisation scales all bands alike, so ratios of two bands see only their own amplifications.
    for i, j in [(0, 1), (2, 3)]:
        assert torch.log2(gains[:, i] / gains[:, j]).std().item() == pytest.approx(math.sqrt(2), rel=0.03)
    one_band = sample("imgfilter", imgfilter_bands=(0, 1, 0, 0)).draws["imgfilter"]
    assert torch.equal(one_band[:, 0], one_band[:, 2]) and torch.equal(one_band[:, 0], one_band[:, 3])
    assert torch.log2(one_band[:, 1] / one_band[:, 0]).std().item() == pytest.approx(1.0, rel=0.03)
    power = torch.tensor(BAND_POWER)
    assert torch.allclose((power * one_band.square()).sum(dim=1), torch.ones(N), atol=1e-5)
    t = torch.tensor([[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.25, 1.0]])
    assert torch.allclose((power * keep_energy(t, power).square()).sum(dim=1), torch.ones(2))


def test_noise_std_is_half_normal_with_scale_0_1():
    params = sample("noise", c=1, h=8, w=8)
    sigma = params.draws["noise"]
    assert (sigma >= 0).all()
    assert sigma.mean().item() == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.03)
    assert sigma.square().mean().sqrt().item() == pytest.approx(0.1, rel=0.03)
    assert params.noise.std().item() == pytest.approx(1.0, rel=0.01)


def test_cutout_centres_are_uniform():
    params = sample("cutout", p=0.5)
    assert fraction(params.cutout) == pytest.approx(0.5, abs=0.02)
    centres = params.cutout_centres
    assert ((centres >= 0) & (centres <= 1)).all()
    assert torch.allclose(centres.mean(dim=0), torch.full((2,), 0.5), atol=0.01)
    assert torch.allclose(centres.std(dim=0), torch.full((2,), 1 / math.sqrt(12)), atol=0.01)


# Laws seen in the output images, at p = 1, over many images.

def test_flipped_images_are_exact_mirrors_half_of_the_time():
    x = images(400)
    y = AugmentPipe(None, p=1.0, xflip=1.0)(x, generator=torch.Generator().manual_seed(1))
    same = (y == x).flatten(1).all(dim=1)
    mirrored = (y == x.flip(-1)).flatten(1).all(dim=1)
    assert (same | mirrored).all()
    assert fraction(mirrored) == pytest.approx(0.5, abs=0.1)


def test_quarter_turned_images_are_exact_rot90s_with_uniform_k():
    x = images(400)
    y = AugmentPipe(None, p=1.0, rotate90=1.0)(x, generator=torch.Generator().manual_seed(1))
    turned = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    matches = torch.stack([(y == t).flatten(1).all(dim=1) for t in turned], dim=1)
    assert (matches.sum(dim=1) == 1).all()
    assert torch.allclose(matches.float().mean(dim=0), torch.full((4,), 0.25), atol=0.08)


def test_brightness_and_contrast_seen_in_images():
    x = images(400)
    y = AugmentPipe(None, p=1.0, brightness=1.0)(x, generator=torch.Generator().manual_seed(1))
    offset = (y - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)
    assert offset[:, 0].std().item() == pytest.approx(0.2, rel=0.2)
    y = AugmentPipe(None, p=1.0, contrast=1.0)(x, generator=torch.Generator().manual_seed(1))
    factor = (y / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), rtol=1e-4)
    assert torch.log2(factor[:, 0]).std().item() == pytest.approx(0.5, rel=0.2)


def test_lumaflip_negates_grey_images_half_of_the_time():
    x = images(400, c=1)
    y = AugmentPipe(None, p=1.0, lumaflip=1.0)(x, generator=torch.Generator().manual_seed(1))
    negated = torch.isclose(y, -x, atol=1e-6).flatten(1).all(dim=1)
    assert (negated | (y == x).flatten(1).all(dim=1)).all()
    assert fraction(negated) == pytest.approx(0.5, abs=0.1)


def test_cutout_zeroes_a_square_of_half_the_size():
    pipe = AugmentPipe(None, p=1.0, cutout=1.0)
    x = images(2, h=32, w=32) + 3  # no pixel is 0 before the cutout
    params = pipe.sample(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    params.cutout_centres = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    y = pipe.apply(x, params)
    zero = (y == 0).all(dim=1)
    assert zero[0].sum() == 16 * 16 and zero[0, 8:24, 8:24].all()
    assert zero[1].sum() == 8 * 8 and zero[1, 24:, :8].all()
