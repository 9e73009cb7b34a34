"""AugmentPipe as a module: interface, identity at p = 0, per-image skipping, seeds, validation."""

import pytest
import torch

from augment import GROUPS, PRESETS, TRANSFORMS, AugmentPipe
from augment.geometric import is_blit


def images(n=4, c=3, h=16, w=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, generator=g, dtype=dtype) * 2 - 1)


def test_presets_are_the_papers_groups():
    assert list(PRESETS) == ["blit", "geom", "color", "filter", "noise", "cutout",
                             "bg", "bgc", "bgcf", "bgcfn", "bgcfnc"]
    assert set(PRESETS["bgc"]) == set(GROUPS["blit"] + GROUPS["geom"] + GROUPS["color"])
    assert set(PRESETS["bgcfnc"]) == set(TRANSFORMS)
    assert set(PRESETS["filter"]) == {"imgfilter"}
    pipe = AugmentPipe("bg", rotate=0.5, hue=2.0)
    assert pipe.strengths["rotate"] == 0.5 and pipe.strengths["hue"] == 2.0 and pipe.strengths["xflip"] == 1.0
    assert pipe.strengths["brightness"] == 0.0
    assert all(v == 0 for v in AugmentPipe(None).strengths.values())


def test_p_is_a_number_or_read_from_its_owner():
    pipe = AugmentPipe("bgc", p=0.25)
    assert pipe.p == 0.25 and list(pipe.state_dict()) == []  # p is not state of the pipe
    pipe.p = 0.7
    assert pipe.p == 0.7
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        pipe.p = 1.5
    owner = {"p": 0.0}
    pipe = AugmentPipe("bgc", p=lambda: owner["p"])
    x = images(32)
    assert torch.equal(pipe(x), x)
    owner["p"] = 1.0  # read at the next draw
    assert (pipe(x) != x).flatten(1).any(dim=1).float().mean() > 0.9


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_is_the_identity_bit_for_bit(preset, channels):
    pipe = AugmentPipe(preset, p=0.0)
    for shape, dtype in [((3, channels, 8, 8), torch.float32), ((2, channels, 12, 20), torch.float64)]:
        x = images(*shape, dtype=dtype)
        x[0, 0, 0, 0] = -0.0
        y = pipe(x)
        assert torch.equal(y, x) and y.dtype == dtype
        assert torch.equal(y.view(torch.int64 if dtype == torch.float64 else torch.int32),
                           x.view(torch.int64 if dtype == torch.float64 else torch.int32))


def test_p_controls_the_strength():
    pipe = AugmentPipe("bgc", p=0.0)
    x = images(32)
    assert torch.equal(pipe(x), x)
    pipe.p = 1.0
    y = pipe(x)
    changed = (y != x).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9


def test_images_without_any_transform_come_out_unchanged():
    pipe = AugmentPipe("bgcfnc", p=0.15)
    x = images(64, 3, 16, 16)
    params = pipe.sample(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = pipe.apply(x, params)
    eye3, eye4 = torch.eye(3), torch.eye(4)
    untouched = ((params.geom == eye3).flatten(1).all(1) & (params.color == eye4).flatten(1).all(1)
                 & (params.band_gains == 1).all(1) & (params.noise_std == 0) & ~params.cutout)
    assert 3 <= int(untouched.sum()) < 61
    assert torch.equal(y[untouched], x[untouched])
    assert (y[~untouched] != x[~untouched]).flatten(1).any(dim=1).all()


def test_whole_pixel_moves_are_exact_copies():
    pipe = AugmentPipe("blit", p=1.0)
    x = images(64, 3, 12, 12)
    params = pipe.sample(64, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    assert is_blit(params.geom, 12, 12).all()
    y = pipe.apply(x, params)
    values = set(x.flatten().tolist())
    assert set(y.flatten().tolist()) <= values


def test_same_seed_same_augmentation_different_seed_different():
    pipe = AugmentPipe("bgcfnc", p=0.6)
    x = images(8)
    a = pipe(x, generator=torch.Generator().manual_seed(5))
    b = pipe(x, generator=torch.Generator().manual_seed(5))
    c = pipe(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(11)
    d = pipe(x)
    torch.manual_seed(11)
    assert torch.equal(pipe(x), d)


def test_float32_and_float64_draw_the_same_augmentation():
    pipe = AugmentPipe("bgc", p=0.8)
    x = images(6, dtype=torch.float64)
    a = pipe(x, generator=torch.Generator().manual_seed(2))
    b = pipe(x.float(), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a.float(), b, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 1, 9, 23), (2, 3, 40, 24), (1, 3, 64, 64)])
def test_any_shape_keeps_shape_dtype_and_is_finite(shape):
    pipe = AugmentPipe("bgcfnc", p=1.0)
    x = images(*shape)
    y = pipe(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()


def test_large_image_runs_on_the_convolution_path():
    pipe = AugmentPipe("bgcf", p=1.0)
    x = images(1, 1, 300, 300)
    y = pipe(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)


def test_gradient_reaches_the_input():
    pipe = AugmentPipe("bgcfnc", p=1.0)
    x = images(4).requires_grad_()
    pipe(x, generator=torch.Generator().manual_seed(0)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(dim=1) > 0).all()


def test_geometry_and_noise_work_for_any_channel_count():
    pipe = AugmentPipe("bg", noise=1.0, p=1.0)
    x = images(3, 5, 16, 16)
    assert pipe(x).shape == x.shape


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="bgcx"), "unknown augmentation preset"),
    (dict(p=1.5), "must be in \\[0, 1\\]"),
    (dict(xflip=-1.0), "xflip must be a finite number >= 0"),
    (dict(scale_std=0.0), "scale_std must be a finite number > 0"),
    (dict(imgfilter_bands=(1, 1, 1)), "imgfilter_bands needs 4 values"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentPipe(**kwargs)


@pytest.mark.parametrize("x, message", [
    (torch.zeros(3, 16, 16), "shape \\[N, C, H, W\\]"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating-point"),
    (torch.zeros(2, 3, 4, 16), "at least 8x8"),
    (torch.zeros(2, 4, 16, 16), "colour transforms need 1 or 3 channels"),
])
def test_bad_images_are_rejected(x, message):
    with pytest.raises(ValueError, match=message):
        AugmentPipe("bgc", p=0.5)(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_parameters():
    pipe = AugmentPipe("bgcfnc", p=0.7)
    x = images(4)
    params = pipe.sample(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cpu = pipe.apply(x, params)
    def to_cuda(v):
        if isinstance(v, dict):
            return {name: t.cuda() for name, t in v.items()}
        return None if v is None else v.cuda()

    moved = type(params)(**{k: to_cuda(v) for k, v in vars(params).items()})
    gpu = pipe.cuda().apply(x.cuda(), moved)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    assert pipe(x.cuda(), generator=torch.Generator("cuda").manual_seed(0)).device.type == "cuda"
